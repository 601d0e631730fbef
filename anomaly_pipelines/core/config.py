"""Typed pipeline settings.

Every number of the original notebook method is a default here, never a constant in code, so a
user can change it in ``configs/*.yaml`` or per run without touching Python. The same object feeds
``detect()`` and the Dagster resources, which is what keeps the two paths identical.
"""

from __future__ import annotations

import codecs
import re
import zoneinfo
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator


class _Section(BaseModel):
    # Unknown keys are errors: a typo in a YAML file must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


# strptime directives (Python's); anything else after "%" is a typo that would only fail when
# the first file is read.
_STRPTIME_DIRECTIVES = set("aAwdbBmyYHIpMSfzZjUWcxXGuV%")


def _timestamp_format(value: str | None) -> str | None:
    """A strftime/strptime format whose directives all exist."""
    if value is None:
        return value
    directives = re.findall(r"%(.)", value.replace("%%", ""))
    unknown = sorted({d for d in directives if d not in _STRPTIME_DIRECTIVES})
    if unknown or (value.endswith("%") and not value.endswith("%%")):
        raise ValueError(
            f"{value!r} is not a usable date format: unknown directive(s) "
            f"{', '.join('%' + d for d in unknown) or '%'}; e.g. '%Y-%m-%d %H:%M:%S'"
        )
    return value


def _date_regex(value: str) -> str:
    """A regex that compiles and has the group that holds the day."""
    try:
        groups = re.compile(value).groups
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
    if groups < 1:
        raise ValueError(
            f"{value!r} has no group: put the day in parentheses, e.g. r'(\\d{{4}}-\\d{{2}}-\\d{{2}})'"
        )
    return value


def _date_text(value: str) -> str:
    """A date (or timestamp) pandas can read, e.g. ``2000-01-01``."""
    import pandas as pd  # only when settings are validated

    try:
        pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{value!r} is not a date; use YYYY-MM-DD") from exc
    return value


def _encoding(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError as exc:
        raise ValueError(f"{value!r} is not a known text encoding (e.g. utf-8, utf-16, cp1252)") from exc
    return value


def _delimiter(value: str | None) -> str | None:
    if value is not None and len(value) != 1:
        raise ValueError(f"{value!r} is not one character; use e.g. ',', ';', '\\t' or '|' (or null to detect)")
    return value


def _duration_text(value: str | None) -> str | None:
    """A pandas duration (``"12h"``, ``"1D"``, ``"5min"``), checked when the settings load: a
    typo used to surface at the first scoring as pandas' bare ``ValueError``."""
    if value is None:
        return value
    import pandas as pd

    try:
        duration = pd.Timedelta(value)
    except (ValueError, TypeError):
        duration = None
    if duration is None or pd.isna(duration) or duration < pd.Timedelta(0):
        raise ValueError(f"{value!r} is not a duration; use one such as '12h', '1D' or '5min'")
    return value


def _cron_text(value: str) -> str:
    """Five cron fields. Dagster checks the fields themselves when the code location loads;
    this catches a wrong field count (a seconds field, a missing one) with a message."""
    if len(value.split()) != 5:
        raise ValueError(
            f"{value!r} is not a cron schedule; use five fields, e.g. '0 5 * * *' (05:00 daily)"
        )
    return value


def time_zone(value: str) -> str:
    """``value`` when it names an IANA time zone. Checked when the settings load, not when the
    first file with times arrives: a typo must fail before a run, with a message, not later
    with a traceback (and not never, for files that carry dates only)."""
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(
            f"{value!r} is not a time zone name; use an IANA name such as 'UTC', "
            "'Europe/Berlin' or 'America/New_York'"
        ) from exc
    return value


class SyntheticSourceConfig(_Section):
    """The built-in demo data ("mock data" mode)."""

    customers: int = 20
    days: int = 730
    start: str = "2024-01-01"
    seed: int = 7
    with_incidents: bool = True


class FocusSourceConfig(_Section):
    """FinOps FOCUS (1.0 and later) exports; see the README section "Billing sources"."""

    # Whose series a row belongs to: a column (SubAccountId, BillingAccountId, ...) or
    # "tag:<key>" for a key of the JSON ``Tags`` column.
    customer_key: str = "SubAccountId"
    cost_column: str = "BilledCost"  # or EffectiveCost, ListCost, ContractedCost
    timestamp_column: str = "ChargePeriodStart"
    # With a tag key, rows without that tag go to this customer; None quarantines them instead
    # (untagged spend is real money, so by default it stays visible as its own series).
    untagged_customer: str | None = "(untagged)"
    # Columns that identify the same charge delivered twice; None: the whole row.
    duplicate_key: list[str] | None = None


class TableSourceConfig(_Section):
    """A generic long table; the three key columns come from ``source.*_column``."""

    # Optional dimensions: canonical name (service, region, charge_category, currency) -> column.
    columns: dict[str, str] = Field(default_factory=dict)
    # Floor timestamps to this step (e.g. "1D"); None keeps them (5-minute metrics stay 5-minute).
    floor: str | None = None
    # Canonical columns that identify one value; None: customer_id, timestamp and mapped dimensions.
    duplicate_key: list[str] | None = None


class DailyFolderSourceConfig(_Section):
    """A folder with one export file per day; each file is in one of the other formats."""

    format: Literal["notebook_csv", "focus", "table"] = "notebook_csv"
    pattern: str = "*"  # glob inside ``source.path``
    # The first group of this regex, searched in the file name, is the file's day (YYYY-MM-DD).
    date_regex: str = r"(\d{4}-\d{2}-\d{2})"

    _check_date_regex = field_validator("date_regex")(_date_regex)
    # A newer delivery of a day that holds no data rows (header only, or empty) while an earlier
    # one has rows: "keep_previous" keeps the earlier delivery, "replace" lets the empty one
    # empty the day, "fail" stops the load. Each case is reported (log and ingest metadata).
    empty_redelivery: Literal["keep_previous", "replace", "fail"] = "keep_previous"


class ValidationConfig(_Section):
    """Row checks; a failing row is quarantined, never dropped silently."""

    # One row above this is a unit or parsing error, not spend.
    max_abs_cost: float = 1e9
    # Negative usage rows: usually a credit or refund under the wrong category in notebook-style
    # files, a reversal of earlier usage in some FOCUS exports (Azure). "quarantine" them,
    # route them to the "signal" frame, or "keep" them in usage (netting the series).
    negative_usage: Literal["quarantine", "signal", "keep"] = "quarantine"
    # Timestamps later than now + this many days are quarantined (typo'd years, wrong formats).
    max_future_days: float = 1.0
    min_timestamp: str = "2000-01-01"

    _check_min_timestamp = field_validator("min_timestamp")(_date_text)
    max_customer_id_length: int = 512


class SourceConfig(_Section):
    """Where raw usage comes from; the readers live in ``core.sources``."""

    kind: Literal["synthetic", "notebook_csv", "focus", "table", "daily_folder"] = "synthetic"
    # A file, a folder (every data file inside, recursively) or a glob.
    path: str | None = None
    # Key columns of the notebook format and generic tables (FOCUS uses ``focus.*``).
    customer_column: str = "customer_id"
    timestamp_column: str = "Date"
    cost_column: str = "TotalCost"
    # CSV reading: None detects the delimiter from the header (, ; tab |).
    delimiter: str | None = None
    encoding: str = "utf-8"
    null_values: list[str] = Field(
        default_factory=lambda: ["", "NULL", "null", "Null", "None", "NaN", "nan", "N/A", "#N/A"]
    )
    # strftime format of timestamps; None infers one per file and fails on ambiguous dates.
    timestamp_format: str | None = None
    # Zone of timestamps that carry a time but no offset (FOCUS requires UTC).
    timezone: str = "UTC"

    _check_timezone = field_validator("timezone")(time_zone)
    _check_format = field_validator("timestamp_format")(_timestamp_format)
    _check_encoding = field_validator("encoding")(_encoding)
    _check_delimiter = field_validator("delimiter")(_delimiter)
    # Where each charge category goes (matched case-insensitively): "usage" is modelled,
    # "signal" is kept apart so a credit cannot hide a usage spike. Unknown categories are
    # quarantined. Tax defaults to signal because it is often billed monthly in one lump.
    charge_categories: dict[str, Literal["usage", "signal"]] = Field(
        default_factory=lambda: {
            "usage": "usage",
            "purchase": "usage",
            "tax": "signal",
            "credit": "signal",
            "refund": "signal",
            "adjustment": "signal",
        }
    )
    # FOCUS ChargeClass "Correction" rows (fixes of earlier periods).
    corrections: Literal["usage", "signal"] = "signal"
    # Expected currency; rows in another one are converted with ``exchange_rates`` (units of
    # ``currency`` per unit of the other) or quarantined. None: a customer whose rows carry more
    # than one currency is an error, since summing them would be meaningless.
    currency: str | None = None
    exchange_rates: dict[str, float] = Field(default_factory=dict)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    focus: FocusSourceConfig = Field(default_factory=FocusSourceConfig)
    table: TableSourceConfig = Field(default_factory=TableSourceConfig)
    daily: DailyFolderSourceConfig = Field(default_factory=DailyFolderSourceConfig)
    # Free-form options (kept for compatibility; the typed sections above are preferred).
    options: dict[str, Any] = Field(default_factory=dict)
    synthetic: SyntheticSourceConfig = Field(default_factory=SyntheticSourceConfig)


class PreprocessConfig(_Section):
    """How validated rows become one regular series per customer."""

    gap_policy: Literal["interpolate", "zero", "ffill"] = "interpolate"
    duplicates: Literal["sum", "last", "reject"] = "sum"
    # A series needs this many steps before it is modelled; shorter ones are returned unscored.
    min_history: int = 42
    # Fraction of rows allowed to fail validation before the run fails.
    max_failure_rate: float = 0.05
    frequency: str | None = None  # e.g. "1D", "5min"; None infers it per series
    _check_frequency = field_validator("frequency")(_duration_text)


class WindowConfig(_Section):
    size: int = 7  # notebook: 7-day windows
    # Window for non-daily data; "auto" sizes it by frequency (one hour, one day, ...).
    size_by_frequency: bool = True
    # What the window models see: "residual" (standardised deviations from the seasonal
    # expectation) or "scaled" (the notebook's scaled raw values, scaled by ``scaler``).
    representation: Literal["residual", "scaled"] = "residual"
    scaler: Literal["robust", "minmax"] = "robust"


class TrainingConfig(_Section):
    train_fraction: float = 0.8  # notebook: first 80% of history
    seed: int = 42


class LSTMConfig(_Section):
    units: int = 32
    epochs: int = 50
    batch_size: int = 16
    patience: int = 5
    validation_fraction: float = 0.1
    learning_rate: float = 1e-3
    # Notebook threshold: mean + 1.5 sigma of training reconstruction errors.
    threshold_sigma: float = 1.5
    # A cohort: customers whose IsolationForest and LOF are fitted on their pooled windows, and
    # the most a cohort step of the batch trains at once (bounds memory).
    customers_per_model: PositiveInt = 512
    # Customers whose stacked LSTMs (see models/lstm_autoencoder) take their training steps
    # together, within a cohort: a group's weights, Adam state and activations stay in the
    # CPU's cache. 200 customers x 730 days took 31.0 to 31.6 s in groups of 25 against 33.2 to
    # 37.2 s in groups of 50 (two training lanes, runs alternating on one machine).
    customers_per_step: PositiveInt = 25
    # Longer histories train on every k-th window so each customer has at most this many: weeks
    # of per-minute data give tens of thousands of near-identical overlapping windows, which
    # cost epochs of time and teach nothing new. Two years of daily data stay whole.
    max_training_windows: int = 2048
    # Customer-steps (customers x batches per epoch x epochs) from which the training step is
    # compiled with XLA: below it, the compile costs more than it saves (a test or one
    # customer's detect() trains in seconds; 200 customers x 730 days compile).
    compile_min_work: int = 15_000
    # Processes that train those groups side by side (core/models/lstm_workers): 0 is one per
    # usable core when each gets at least two groups (else the caller's process), 1 trains in
    # the caller's process. One process keeps 2 cores only 1.4 busy.
    training_processes: NonNegativeInt = 0


class IsolationForestConfig(_Section):
    n_estimators: int = 100
    max_samples: int | Literal["auto"] = "auto"
    contamination: float | Literal["auto"] = "auto"
    # One forest serves a cohort (see core/models/outlier.py); it sees at most this many windows.
    max_training_windows: int = 50_000


class LocalOutlierFactorConfig(_Section):
    n_neighbors: int = 20
    # LOF keeps its training windows for scoring; a seeded subsample bounds memory and time.
    # Brute-force neighbour search beats trees on these 13-dimensional windows (measured 5x).
    max_training_windows: int = 5_000
    algorithm: Literal["auto", "brute", "kd_tree", "ball_tree"] = "brute"


class DecreaseRuleConfig(_Section):
    enabled: bool = True
    threshold: float = -0.30  # notebook: day-over-day drop below -30%
    # A drop only counts when the value is also this many residual spreads below what this
    # weekday usually is: a weekend dip or the day after a month-start invoice is a drop, but
    # not a surprise. On both daily-cost data sets 2.5 removes false alarms from shallow
    # holiday dips that 2.0 let through and keeps every incident; 3.0 starts to detect later.
    confirm_z: float = 2.5
    # A confirmed drop is an anomaly by itself once the step also reaches this share of the
    # residual's own threshold (0: it always needs the mean of two signals). A day's spend
    # falling by a third to well below its weekday is what an outage or a broken export looks
    # like, and the mean of two signals, residual and drop, missed half of the synthetic drops:
    # a 45% drop at 1.16 of the residual's threshold scored 1.11. Tuned on synthetic (0.7 to
    # 0.9: event F1 0.729 -> 0.739, NAB 61.4 -> 65.8), confirmed on portfolio (0.759 -> 0.765,
    # NAB 77.3 -> 80.1); 0.6 and below added false alarms on both.
    alone_residual: float = 0.8


class HybridConfig(_Section):
    """How the component signals become one score; see ``core.scoring`` for the rule."""

    # Each component's score is divided by a threshold learned on its training scores, so 1.0
    # means "at this series' own threshold": quantile + reach * (quantile - median).
    component_quantile: float = 0.95
    threshold_reach: float = 2.0
    residual_min_z: float = 4.0
    # Training steps in runs of at least this many steps beyond ``clean_history_z`` spreads (an
    # incident nobody labelled) are left out when thresholds are learned (0 keeps them all).
    threshold_exclude_run: int = 3
    # Each signal's threshold is at least the score its own training exceeds this often per month
    # (peaks-over-threshold tail fit above the ``tail_quantile`` quantile; 0 disables): what makes
    # thresholds follow the frequency and noise of a series.
    alarm_budget_per_month: float = 0.75
    tail_quantile: float = 0.98
    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "residual": 1.0,
            "lstm": 1.0,
            "isolation_forest": 1.0,
            "local_outlier_factor": 1.0,
        }
    )
    # A step is an anomaly when the mean of its two strongest normalised signals reaches this.
    decision_threshold: float = 1.25
    # Online, a window model's vote at a step is capped in proportion to the step's own residual,
    # fully from this share of the residual's threshold (0: no cap), so an incident does not
    # echo through the windows after it.
    window_gate: float = 1.0
    # Sub-daily series: the residual alone at this multiple of its threshold is an anomaly too
    # (0: always two detectors). Daily series always need two.
    residual_alone: float = 1.0
    # Weekly or coarser series (measured against last year): the residual alone at this multiple
    # of its threshold is an anomaly too (0: always two detectors). Six years of months are 57
    # training steps: too few windows for the window models to back a month that doubled.
    coarse_residual_alone: float = Field(default=2.0, ge=0)
    # A value repeated exactly for ``stuck_run`` times as many steps as the longest such run in
    # training (and at least 6 steps) is an anomaly: a metric whose agent stopped, a billing
    # export that keeps sending yesterday's number. A run's deviation from the expectation only
    # grows as the cycle moves away from it, so the other signals find a stuck metric late or
    # never (0 turns it off). No labelled set holds one, and at 3 none of them changes.
    stuck_run: float = Field(default=3.0, ge=0)
    # Sub-daily series: the LSTM alone at this multiple of its threshold (not capped by the
    # step's residual) is an anomaly too (0: never alone). A window that far from every shape
    # seen in training is an incident even when its newest step sits near its expectation.
    # On Cloud Monitoring 2 to 3.5 each found more incidents with no more false alarms (3: event
    # F1 0.44 -> 0.47); on the NAB series it changed nothing. The IsolationForest or LOF alone
    # raised false alarms on tweets and cloud metrics.
    lstm_alone: float = 3.0
    # Sub-daily series: the residual votes alone only where some window model (of positive
    # weight) scores the window ending on the step at least this share of its own threshold
    # (0: always). A step odd by itself in a window whose shape every model finds ordinary is
    # a noisy step: identical periodic spikes, a tweet burst that comes and goes. Tuned on
    # the cached signals of every data set: 0.1 to 0.3 made none worse (0.25: one false alarm
    # fewer on artificialNoAnomaly, tweets 0.538 -> 0.543, Cloud Monitoring one false alarm
    # fewer); 0.35 and up traded Cloud Monitoring incidents for tweets and artificial ones.
    residual_alone_support: float = Field(default=0.25, ge=0)
    # A run of flags starting within this long after an earlier flag is the same incident
    # flaring up again: reported as ``is_repeat``, not as a new anomaly. The longer of
    # ``quiet_windows`` windows and ``quiet_period`` (a pandas duration).
    quiet_windows: int = 2
    quiet_period: str = "1D"
    # Sub-daily series: a step flagged by the residual alone that stays below ``peak_ratio`` of
    # the largest residual of the preceding ``peak_window`` (at most the quiet period) is the way
    # down from that peak, a repeat, not news (0 turns it off). A bursty series re-crosses its
    # threshold for hours after a spike; each crossing outside a labelled window costs NAB
    # points. Tweets NAB 58.1 -> 59.8, Cloud Monitoring one false alarm fewer, nothing else
    # changed; any ratio from 0.5 to 0.85 and windows from 3 to 12 hours did as well.
    peak_ratio: float = 0.8
    peak_window: str = "12h"
    # A flagged step whose residual is at least ``escalation`` times the largest residual of
    # the flags in the quiet period before it is a new alarm, not a repeat (0 turns it off):
    # a small alarm must not silence a far larger incident hours later. Cloud Monitoring 0.467
    # -> 0.477 (three incidents), nothing else changed; 2.5 did the same, 2 added false alarms
    # on tweets, portfolio and synthetic, 4 and up kept fewer incidents.
    escalation: float = Field(default=3.0, ge=0)
    # Sub-daily series: once a lasting shift has settled, at least ``shift_share`` of the
    # ``shift_span`` before a step (at least 12 steps) beyond ``shift_z`` spreads the same way
    # and scattered no wider than ``shift_noise`` spreads, the step is measured from the new
    # level too and the nearer of the two counts (``scoring.settled_shift``; "0h" turns it off).
    # The window models see the same deviations. A 5-minute metric stepping up for good was
    # flagged for 580 steps (two days, until the seasonal history learned the level), each step
    # past a labelled window a false alarm; now for the 6 hours it takes to settle. Cloud
    # Monitoring NAB 33.5 -> 34.4 and event F1 0.477 -> 0.485, tweets NAB 63.1 -> 63.6, the
    # rest unchanged.
    shift_span: str = "6h"
    shift_z: float = Field(default=2.0, gt=0)
    shift_share: float = Field(default=0.9, gt=0, le=1)
    shift_noise: float = Field(default=2.0, gt=0)
    _check_durations = field_validator("quiet_period", "peak_window", "shift_span")(_duration_text)
    # Each normalised signal counts at most this much in that mean, so no detector alerts alone:
    # with 2.0 a second signal must reach at least half its own threshold. Without the cap, one
    # over-confident window model raised most of the false alarms on cloud metrics.
    signal_cap: float = 2.0
    # Daily series scored together: a step deviating beyond ``portfolio_move_z`` spreads on a
    # day when at least ``portfolio_move_share`` of the other warmed-up daily series deviate as
    # far the same way (and there are at least ``portfolio_move_min_series`` of them) is a
    # portfolio-wide move, a public holiday or a provider-wide change, not this customer's
    # incident: its residual does not vote and it is not flagged; ``reasons`` says
    # ``portfolio_move`` (0 turns it off). The portfolio generator's holidays, which a year of
    # history cannot know the first time round, raised 15 of its 33 false alarms: event F1
    # 0.70 -> 0.76, NAB 75.7 -> 77.3; nothing else moved (no data set has such days). Counted
    # on deviations before the annual and quarterly recurrence (a holiday's second year is a
    # move too, for the customers it is new to): portfolio 0.803 -> 0.814, NAB 80.7 -> 81.1,
    # false alarms 20 -> 18; held-out portfolio (seed 12) 0.626 -> 0.641; synthetic unchanged.
    portfolio_move_share: float = Field(default=0.2, ge=0, le=1)
    portfolio_move_z: float = Field(default=3.0, gt=0)
    portfolio_move_min_series: PositiveInt = 10
    # Daily series: a deviation repeating the same date's deviation a year ago is expected
    # (holidays, year-end freezes; see ``detector._calendar_recurrence``).
    annual_recurrence: bool = True
    # Daily series: in a month's last 5 days, a deviation repeating the one as many days before
    # the month's end three months earlier is expected (quarter-end closes and batches), from
    # the second quarter end on instead of a year later. Portfolio (quarter-end batch bumps):
    # event F1 0.765 -> 0.803, NAB 80.1 -> 80.7, false alarms 24 -> 20; synthetic unchanged
    # (the last 3, 5 or 7 days alike; 5 leaves Christmas out of late March).
    quarterly_recurrence: bool = True
    # Cycles of history behind each expected value (weeks for daily data, days for sub-daily).
    seasonal_cycles: int = 4
    # Sub-daily series with at least four weeks of training take a weekly cycle instead of a
    # daily one when it leaves residuals at most this fraction of the daily cycle's (median
    # absolute residual on the training part): taxi rides or road traffic, whose weekends
    # differ from weekdays, would otherwise measure every weekend against a weekday and hide a
    # holiday inside that spread. The price is a warm-up of two weeks instead of two days.
    # 0 keeps the daily cycle.
    weekly_cycle_gain: float = Field(default=0.75, ge=0, le=1)
    # Sub-daily series that keep the daily cycle (too short for a weekly one) compute weekdays'
    # and weekends' expectations apart (a Monday follows Friday, a Saturday last Sunday) when
    # the weekend days of training sit at a level of their own: their median at least this much
    # above the weekdays' or as far below in ratio (0.5: 1.5 times, or 2/3 and less), every
    # weekend day the same way, and well outside the weekdays' own day-to-day spread
    # (``scoring.weekends_apart``). Two weeks of 5-minute metrics with quiet weekends otherwise
    # measure each weekend against Friday, and that spread hides a weekday's drop of the same
    # depth. The first weekend then has no weekend before it and is warm-up. 0.15 also took in
    # weekends 25-30% quieter and cost Cloud Monitoring an event (see docs/tuning.md). 0
    # disables.
    weekend_level_change: float = Field(default=0.5, ge=0)
    # Values this many spreads from their expectation are left out of the history the final
    # expectation is computed from, so incidents do not become the baseline (0 disables).
    clean_history_z: float = 4.0
    # Rounds of that cleaning: each round measures surprise against the previous round's cleaner
    # expectation, so the tail of a runaway ramp is caught once its start no longer hides it.
    clean_history_passes: int = 3


class MlflowConfig(_Section):
    tracking_uri: str = "sqlite:///.mlflow/mlflow.db"
    # Where a new experiment keeps its artifacts; empty: the tracking server's own choice (an
    # `mlflow server --serve-artifacts` then stores them, see configs/deploy/pipeline.yaml).
    artifact_location: str = ".mlflow/artifacts"
    experiment: str = "anomaly_pipelines"
    model_prefix: str = "anomaly_pipelines"
    alias: str = "champion"


class ExplainConfig(_Section):
    """How anomalies become incidents and text; see ``core.explain``."""

    explainer: Literal["offline", "gemini"] = "offline"
    max_headline_chars: int = 70
    max_detail_chars: int = 700
    top_root_causes: int = 3
    # A root cause must carry at least this share of the incident's deviation to be listed.
    min_root_cause_share: float = 0.1
    # Anomalous steps at most this many normal steps apart form one incident.
    max_gap_steps: int = 1
    # |impact %| at which an incident becomes medium, high, critical (below the first: low).
    severity_pct: tuple[float, float, float] = (20.0, 50.0, 100.0)
    # Gemini (used when explainer == "gemini"; the key comes from the GEMINI_API_KEY env var).
    gemini_model: str = "gemini-2.5-flash"
    gemini_base_url: str | None = None  # None: Google's endpoint; tests point it at 127.0.0.1
    # Wall-clock limit of one request, the whole answer (not per read: a server trickling
    # bytes cannot stretch it).
    timeout_seconds: float = 20.0
    # Wall-clock limit of a run's Gemini work (requests, retries, Retry-After waits); then the
    # remaining incidents keep their offline text. None: no limit.
    max_seconds_per_run: float | None = 300.0
    max_output_tokens: int = 256
    temperature: float = 0.2
    max_calls_per_run: int = 50
    max_retries: int = 3
    backoff_seconds: float = 1.0
    # Gemini 2.5 "thinking" tokens count against max_output_tokens: 0 turns thinking off (flash
    # models); None keeps the model's default (models that cannot turn it off, e.g. pro).
    thinking_budget: int | None = 0
    cache_dir: str | None = "data/outputs/explain_cache"


class OutputConfig(_Section):
    directory: str = "data/outputs"
    # Where each day's billing file is copied before it is read (daily_folder source).
    staging_directory: str = "data/staging"


class OrchestrationConfig(_Section):
    """Dagster settings read once when the definitions load: partitions, the schedule and the
    executor are part of the code location, so unlike every other section they cannot change
    per run (edit the YAML and reload the code location instead)."""

    daily_start_date: str = "2024-01-01"  # first daily partition (daily files, daily scores)

    _check_start = field_validator("daily_start_date")(_date_text)
    # When the daily scoring run starts (in ``timezone``); it scores the day that just ended.
    daily_hour: int = Field(default=6, ge=0, le=23)
    daily_minute: int = Field(default=0, ge=0, le=59)
    timezone: str = "UTC"
    # When ``ingest_job`` reads the source again (cron, in ``timezone``). Scoring reads each
    # day's file itself, but a (re)training reads ``validated_usage``: ingesting before the
    # daily scoring means the retraining its drift measurement requests learns from the newest
    # rows (and customers new in the files are trained the same morning).
    ingest_cron: str = "0 5 * * *"
    _check_ingest_cron = field_validator("ingest_cron")(_cron_text)
    # Whether the two schedules (ingest, daily scoring) start running when the code location loads.
    schedule_running_by_default: bool = True
    # "in_process": every step of a run in one process (one process per run, least memory);
    # "multiprocess": one process per step, at most ``max_concurrent_steps`` at a time;
    # "celery": steps go to celery workers (dagster-celery, configs/deploy/), see ``celery_config``;
    # "k8s": each step in its own Kubernetes pod (dagster-k8s, configs/deploy/k8s-values.yaml).
    executor: Literal["in_process", "multiprocess", "celery", "k8s"] = "in_process"
    max_concurrent_steps: int = 2
    # The celery executor's settings (broker, result backend, celery options), a YAML file with
    # an ``execution: config:`` block; the workers are started with the same file.
    celery_config: str = "configs/deploy/celery.yaml"
    # Customers per step of ``cohort_batch_job`` (0: ``lstm.customers_per_model``, one cohort
    # per step); each cohort is one step that any worker can take.
    cohort_size: int = Field(default=0, ge=0)
    # Attempts after the first for a cohort step that failed (a lost connection to MLflow or
    # Postgres); a step whose worker process died is redelivered by celery instead.
    step_retries: int = Field(default=2, ge=0)
    # Seconds before the first retry of a failed cohort step; retry n waits (2**n - 1) times
    # this, plus or minus this much jitter (cohorts that lost the same server come back spread
    # out). Long enough for a restarted tracking server to come back.
    step_retry_delay: float = Field(default=5.0, ge=0)

    _check_timezone = field_validator("timezone")(time_zone)


class AlertSubscriptionConfig(_Section):
    """One recipient of alerts: a channel, which customers, which incidents and how often.

    Secrets never appear in this file: the webhook URL (Slack URLs carry their token), header
    values and the SMTP password are read from the environment variables named here."""

    name: str
    # "slack": Slack-compatible JSON ({"text", "blocks"}); "webhook": generic JSON; "email": SMTP.
    channel: Literal["slack", "webhook", "email"] = "webhook"
    # Webhook channels: the environment variable holding the URL.
    url_env: str | None = None
    # Extra HTTP headers, header name -> environment variable holding its value (e.g. a token).
    header_env: dict[str, str] = Field(default_factory=dict)
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_ssl: bool = False  # SMTP over TLS (port 465)
    smtp_starttls: bool = False  # upgrade a plain connection with STARTTLS (port 587)
    smtp_username: str | None = None
    smtp_password_env: str | None = None  # environment variable holding the SMTP password
    email_from: str = "anomaly-pipelines@localhost"
    email_to: list[str] = Field(default_factory=list)
    # Customer ids (or shell-style patterns such as "acme-*"); ["*"]: every customer.
    customers: list[str] = Field(default_factory=lambda: ["*"])
    # Thresholds on the incident's absolute impact (in its currency) and on |impact %|.
    min_impact: float = 0.0
    min_impact_pct: float = 0.0
    # "all": both thresholds must be met; "any": one is enough (AWS's AND / OR expressions).
    threshold_mode: Literal["all", "any"] = "all"
    min_severity: Literal["low", "medium", "high", "critical"] = "low"
    # "immediate": after each daily run; "daily" / "weekly": one digest message.
    frequency: Literal["immediate", "daily", "weekly"] = "immediate"
    digest_weekday: int = Field(default=0, ge=0, le=6)  # weekly digests go out on this day (0=Mon)
    send_updates: bool = True  # "day 3, +$1,240 so far" while an incident goes on
    send_no_data: bool = True  # a customer's data stopped arriving, or a day's file is missing


class AlertsConfig(_Section):
    """Alerts after the daily scoring run: subscriptions, delivery and the no-data rule."""

    enabled: bool = True
    # SQLAlchemy URL of the operations store (alerts sent, incidents, feedback); the same tables
    # work on Postgres (postgresql+psycopg://...). None: sqlite:///<output.directory>/operations.db
    store_url: str | None = None
    subscriptions: list[AlertSubscriptionConfig] = Field(default_factory=list)
    # Days of daily scores merged into incidents (an incident older than this is forgotten).
    lookback_days: int = 30
    # Delivery attempts within one run, waiting backoff_seconds * 2**attempt between them.
    max_attempts: int = 3
    backoff_seconds: float = 1.0
    timeout_seconds: float = 10.0
    # An undelivered alert is tried again by later runs until it has had this many attempts.
    max_total_attempts: int = 12
    # A customer whose newest data is this many days older than the scored day gets a no-data alert.
    no_data_after_days: int = 2
    # Prefix for plot links in messages (e.g. a file server); None: the local file path.
    plot_base_url: str | None = None


class FeedbackConfig(_Section):
    """What people say about incidents (accurate, not-anomaly, planned)."""

    # After "not-anomaly" or "planned", incidents of the same customer, root-cause dimension and
    # direction starting within this many days of the marked incident's end are not alerted.
    suppress_days: int = 14


class DriftConfig(_Section):
    """Drift measures, retraining of drifted or stale customers, champion/challenger promotion."""

    # Newest scored days compared with the training part of the same customer.
    recent_days: int = 28
    # KS distance between the recent and the training |residual z| distributions above which a
    # customer has drifted (0: identical, 1: disjoint).
    max_residual_ks: float = 0.5
    # Share of recent days flagged above which a customer has drifted (alert budget).
    alert_budget: float = 0.25
    # A champion older than this many days is stale and is retrained.
    max_model_age_days: int = 90
    # A retrained model is a challenger: it takes the alias only when its cost on the newest
    # holdout_days (flagged days not confirmed accurate + 2 x confirmed days missed) is at most
    # the champion's plus promotion_tolerance. False: every new version becomes champion.
    gate_promotion: bool = True
    holdout_days: int = 28
    promotion_tolerance: float = 0.0


class PipelineConfig(_Section):
    source: SourceConfig = Field(default_factory=SourceConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    lstm: LSTMConfig = Field(default_factory=LSTMConfig)
    isolation_forest: IsolationForestConfig = Field(default_factory=IsolationForestConfig)
    local_outlier_factor: LocalOutlierFactorConfig = Field(default_factory=LocalOutlierFactorConfig)
    decrease_rule: DecreaseRuleConfig = Field(default_factory=DecreaseRuleConfig)
    hybrid: HybridConfig = Field(default_factory=HybridConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)

    def merged(self, overrides: dict[str, Any] | None) -> PipelineConfig:
        """Return a copy with a nested dict of overrides applied (deep merge)."""
        if not overrides:
            return self
        return PipelineConfig.model_validate(deep_merge(self.model_dump(), overrides))


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` applied key by key; nested dicts are merged, not replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Defaults, then the YAML file (if any), then ``overrides``: later wins, key by key."""
    config = PipelineConfig()
    if path is not None:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        config = config.merged(data)
    return config.merged(overrides)


def as_config(config: PipelineConfig | dict[str, Any] | str | Path | None) -> PipelineConfig:
    """Accept what notebook users naturally pass: nothing, a dict, a YAML path or a config."""
    if config is None:
        return PipelineConfig()
    if isinstance(config, PipelineConfig):
        return config
    if isinstance(config, dict):
        return PipelineConfig().merged(config)
    return load_config(config)
