"""Loaders of the labelled benchmarks, on tiny files written here (and the real shared data when
it is present)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_pipelines.core.evaluation import datasets
from anomaly_pipelines.core.sources.synthetic import generate_usage


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- synthetic -----------------------------------------------------------------------------------


def test_label_usage_sums_rows_per_day_and_labels_incident_days() -> None:
    days = pd.date_range("2024-03-01", periods=5, freq="D", tz="UTC")
    usage = pd.DataFrame(
        {
            "customer_id": ["a"] * 10 + ["b"] * 5,
            "timestamp": list(days) * 3,
            "service": ["x"] * 5 + ["y"] * 5 + ["x"] * 5,
            "cost": [1.0] * 5 + [2.0, 2.0, 9.0, 9.0, 2.0] + [5.0] * 5,
        }
    )
    incidents = pd.DataFrame(
        {
            "customer_id": ["a"],
            "kind": ["spike"],
            "service": ["y"],
            "start": [days[2]],
            "end": [days[3]],
        }
    )
    series = {s.name: s for s in datasets.label_usage(usage, incidents, monthly_charges=("a",))}
    a, b = series["a"], series["b"]
    assert a.values.tolist() == [3.0, 3.0, 10.0, 10.0, 3.0]
    assert a.labels.tolist() == [False, False, True, True, False]
    assert a.kinds.tolist() == ["", "", "spike", "spike", ""]
    assert not b.labels.any()
    assert a.recurring.tolist() == [True, False, False, False, False] and not b.recurring.any()
    assert str(a.frame["timestamp"].dt.tz) == "UTC"


def test_synthetic_benchmark_labels_every_incident_and_includes_credits() -> None:
    series = datasets.synthetic_benchmark(quick=True)
    size = datasets.SYNTHETIC_QUICK
    data = generate_usage(
        customers=size["customers"],
        days=size["days"],
        seed=datasets.SYNTHETIC_SEED,
        credit_rate=datasets.SYNTHETIC_CREDIT_RATE,
    )
    assert len(series) == size["customers"]
    # Incidents are at least three weeks apart, so each one is exactly one labelled event.
    events = sum(len(datasets.metrics.segments(s.labels)) for s in series)
    assert events == len(data.incidents) > 0
    kinds = {k for s in series for k in s.kinds if k}
    assert kinds == set(data.incidents["kind"])
    # Month-start charges are marked on exactly the customers the generator billed them to.
    billed = {s.name for s in series if s.recurring.any()}
    assert billed == set(data.monthly_charges) and billed
    credits = data.usage[data.usage["charge_category"] == "Credit"]
    assert len(credits) > 0 and (credits["cost"] < 0).all()
    # The daily value is net of credits.
    net = data.usage.groupby(["customer_id", "timestamp"])["cost"].sum()
    first = series[0]
    expected = net.loc[first.name].to_numpy()
    np.testing.assert_allclose(first.values, expected)


def test_credits_leave_usage_rows_unchanged() -> None:
    plain = generate_usage(customers=3, days=120, seed=5)
    credited = generate_usage(customers=3, days=120, seed=5, credit_rate=1.0)
    usage_rows = credited.usage[credited.usage["charge_category"] == "Usage"].reset_index(drop=True)
    pd.testing.assert_frame_equal(usage_rows, plain.usage.reset_index(drop=True))
    pd.testing.assert_frame_equal(credited.incidents, plain.incidents)
    assert (credited.usage["charge_category"] == "Credit").any()
    assert (credited.usage.groupby(["customer_id", "timestamp"])["cost"].sum() > 0).all()


# --- CSV reading ---------------------------------------------------------------------------------


def test_read_series_csv_parses_mixed_timestamps_and_sorts(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.csv",
        'TimeStamp,Value,Label\n"2018-06-17T02:00:00Z",3.5,1\n2018-06-17 00:00:00,1,0\n2018-06-17 01:00:00,2.0,0\n',
    )
    frame = datasets.read_series_csv(path, "TimeStamp", "Value", "Label")
    assert frame["value"].tolist() == [1.0, 2.0, 3.5]
    assert frame["label"].tolist() == [False, False, True]
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2018-06-17T00:00:00Z")


def test_read_series_csv_names_file_line_and_column_of_bad_values(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", "TimeStamp,Value,Label\n2018-01-01 00:00,1,0\n2018-01-01 01:00,abc,0\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 3, column 'Value': 'abc' is not a finite number"):
        datasets.read_series_csv(path, "TimeStamp", "Value", "Label")
    path = _write(tmp_path / "ts.csv", "TimeStamp,Value,Label\nyesterday,1,0\n")
    with pytest.raises(ValueError, match=r"ts\.csv: line 2, column 'TimeStamp'"):
        datasets.read_series_csv(path, "TimeStamp", "Value", "Label")
    path = _write(tmp_path / "label.csv", "TimeStamp,Value,Label\n2018-01-01 00:00,1,0\n2018-01-01 01:00,1,2\n")
    with pytest.raises(ValueError, match=r"label\.csv: line 3, column 'Label': '2' is not a 0/1 label"):
        datasets.read_series_csv(path, "TimeStamp", "Value", "Label")
    path = _write(tmp_path / "cols.csv", "time,Value\n2018-01-01,1\n")
    with pytest.raises(ValueError, match=r"cols\.csv: missing column\(s\) \['TimeStamp'"):
        datasets.read_series_csv(path, "TimeStamp", "Value", "Label")


def test_read_series_csv_duplicates_and_empty_values(tmp_path: Path) -> None:
    text = (
        "TimeStamp,Value,Label\n"
        "2018-01-01 00:00,1,0\n"
        "2018-01-01 01:00,4,1\n"
        "2018-01-01 01:00,6,0\n"
        "2018-01-01 02:00,,0\n"
        "2018-01-01 03:00,2,0\n"
    )
    path = _write(tmp_path / "dup.csv", text)
    with pytest.raises(ValueError, match=r"dup\.csv: line 4, column 'TimeStamp': duplicate timestamp"):
        datasets.read_series_csv(path, "TimeStamp", "Value", "Label", empty_values="drop")
    with pytest.raises(ValueError, match=r"dup\.csv: line 5, column 'Value': '' is not a finite number"):
        datasets.read_series_csv(path, "TimeStamp", "Value", "Label", duplicates="merge")
    frame = datasets.read_series_csv(path, "TimeStamp", "Value", "Label", duplicates="merge", empty_values="drop")
    # The repeated hour becomes one row (mean value, labelled because one copy is); the empty
    # 02:00 sample is a gap.
    assert frame["value"].tolist() == [1.0, 5.0, 2.0]
    assert frame["label"].tolist() == [False, True, False]
    assert frame["timestamp"].dt.hour.tolist() == [0, 1, 3]


# --- Cloud Monitoring layout ---------------------------------------------------------------------


def _cloud_tree(root: Path) -> Path:
    rows = "\n".join(f"2018-01-01 {h:02d}:00:00,{10 + h},{int(h in (5, 6, 9))}" for h in range(12))
    _write(root / "group-a" / "a-01.csv", "TimeStamp,Value,Label\n" + rows + "\n")
    _write(root / "group-a" / "a-02.csv", "TimeStamp,Value,Label\n" + rows.replace(",1\n", ",0\n") + "\n")
    minutes = "\n".join(f'"2018-01-01T00:{m:02d}:00Z",{m},0' for m in range(30))
    _write(root / "group-b" / "b-01.csv", '"TimeStamp","Value","Label"\n' + minutes)
    return root


def test_cloud_monitoring_loader_on_a_tiny_tree(tmp_path: Path) -> None:
    root = _cloud_tree(tmp_path / "cloud-monitoring")
    series = datasets.cloud_monitoring(root)
    assert [s.name for s in series] == ["group-a/a-01", "group-a/a-02", "group-b/b-01"]
    first = series[0]
    assert first.dataset == "cloud-monitoring"
    assert len(first) == 12
    # consecutive labelled points form events: (5, 6) and (9, 9)
    assert datasets.metrics.segments(first.labels) == [(5, 6), (9, 9)]
    assert first.windows is None and first.nab_window_positions() == datasets.metrics.nab_windows(first.labels)
    quick = datasets.cloud_monitoring(root, quick=True)
    assert [s.name for s in quick] == ["group-a/a-01", "group-b/b-01"]
    info = datasets.describe(series)
    # a-02 and b-01 carry no label: two events in all, two series without any
    assert info["series"] == 3 and info["steps"] == 54 and info["events"] == 2
    assert info["series_without_events"] == 2
    assert info["frequencies"] == {"1 hour": 2, "1 minute": 1}


def test_quick_cut_keeps_the_first_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "QUICK_MAX_STEPS", 8)
    rows = "\n".join(f"2018-01-01 {h:02d}:00:00,{h},{int(h == 15)}" for h in range(20))
    root = tmp_path / "cm"
    _write(root / "g" / "x.csv", "TimeStamp,Value,Label\n" + rows + "\n")
    (cut,) = datasets.cloud_monitoring(root, quick=True)
    # end = first event (15) + 8 // 4 = 17 -> steps 9..16
    assert cut.values.tolist() == list(range(9, 17))
    assert cut.labels.sum() == 1


def test_missing_cloud_monitoring_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Cloud Monitoring Dataset not found"):
        datasets.cloud_monitoring(tmp_path / "nowhere")


SHARED = datasets.shared_data_root() / "cloud-monitoring"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared Cloud Monitoring data not present at {SHARED}")
def test_real_cloud_monitoring_dataset_loads() -> None:
    series = datasets.cloud_monitoring(SHARED)
    assert len(series) == 60
    info = datasets.describe(series)
    assert info["events"] > 0 and 0 < info["series_without_events"] < 60
    assert set(info["frequencies"]) == {"1 hour", "1 minute"}
    for s in series:
        ts = s.frame["timestamp"]
        assert ts.is_monotonic_increasing and ts.is_unique
        assert np.isfinite(s.values).all()


# --- NAB layout ----------------------------------------------------------------------------------


def _nab_tree(root: Path, windows: dict[str, list[list[str]]]) -> Path:
    rows = "\n".join(f"2014-04-01 {h:02d}:00:00,{h * 1.5}" for h in range(24))
    _write(root / "data" / "realKnownCause" / "machine.csv", "timestamp,value\n" + rows + "\n")
    _write(root / "data" / "artificialNoAnomaly" / "flat.csv", "timestamp,value\n" + rows + "\n")
    _write(root / "data" / "realKnownCause" / "unlabelled.csv", "timestamp,value\n" + rows + "\n")
    _write(root / "labels" / "combined_windows.json", json.dumps(windows))
    return root


def test_nab_loader_on_a_tiny_tree(tmp_path: Path) -> None:
    root = _nab_tree(
        tmp_path / "NAB",
        {
            "realKnownCause/machine.csv": [["2014-04-01 05:00:00.000000", "2014-04-01 07:00:00.000000"]],
            "artificialNoAnomaly/flat.csv": [],
        },
    )
    series = {s.name: s for s in datasets.nab_corpus(root)}
    # Files without an entry in combined_windows.json are not part of the benchmark.
    assert set(series) == {"realKnownCause/machine", "artificialNoAnomaly/flat"}
    machine = series["realKnownCause/machine"]
    assert machine.dataset == "nab" and len(machine) == 24
    assert np.flatnonzero(machine.labels).tolist() == [5, 6, 7]
    # NAB scoring uses the windows as given, not windows derived from the labels.
    assert machine.nab_window_positions() == [(5, 7)]
    assert not series["artificialNoAnomaly/flat"].labels.any()
    assert series["artificialNoAnomaly/flat"].nab_window_positions() == []


def test_nab_loader_rejects_windows_for_unknown_files_and_bad_windows(tmp_path: Path) -> None:
    root = _nab_tree(tmp_path / "a", {"realKnownCause/missing.csv": []})
    with pytest.raises(ValueError, match=r"combined_windows\.json: window\(s\) for file\(s\) not under"):
        datasets.nab_corpus(root)
    root = _nab_tree(
        tmp_path / "b", {"realKnownCause/machine.csv": [["2014-04-01 07:00:00", "2014-04-01 05:00:00"]]}
    )
    with pytest.raises(ValueError, match="ends before it starts"):
        datasets.nab_corpus(root)
    with pytest.raises(FileNotFoundError, match="not a NAB checkout"):
        datasets.nab_corpus(tmp_path / "empty")


def test_load_dataset_by_name(tmp_path: Path) -> None:
    root = _cloud_tree(tmp_path / "shared" / "cloud-monitoring")
    assert len(datasets.load_dataset("cloud-monitoring", data_root=root.parent)) == 3
    with pytest.raises(ValueError, match="needs the path of a NAB checkout"):
        datasets.load_dataset("nab")
    with pytest.raises(ValueError, match="unknown data set 'kaggle'"):
        datasets.load_dataset("kaggle")


def test_nab_dev_is_split_by_subset(tmp_path: Path) -> None:
    """NAB's subsets differ in kind, so each is its own data set in the report."""
    windows = {
        "realKnownCause/machine.csv": [["2014-04-01 05:00:00", "2014-04-01 07:00:00"]],
        "artificialNoAnomaly/flat.csv": [],
    }
    _nab_tree(tmp_path / "shared" / "nab-dev", windows)
    loaded = datasets.load_datasets("nab-dev", data_root=tmp_path / "shared")
    assert {k: [s.name for s in v] for k, v in loaded.items()} == {
        "nab-dev/artificialNoAnomaly": ["artificialNoAnomaly/flat"],
        "nab-dev/realKnownCause": ["realKnownCause/machine"],
    }
    assert all(s.dataset == "nab-dev" for v in loaded.values() for s in v)
    assert list(datasets.load_datasets("synthetic", quick=True)) == ["synthetic"]
    with pytest.raises(FileNotFoundError, match="not a NAB checkout"):
        datasets.load_datasets("nab-dev", data_root=tmp_path / "absent")


@pytest.mark.skipif(not (SHARED.parent / "nab-dev").is_dir(), reason="shared nab-dev data not present (../shared/data/nab-dev)")
def test_shared_nab_dev_loads_its_four_subsets() -> None:
    loaded = datasets.load_datasets("nab-dev", data_root=SHARED.parent)
    assert {k: len(v) for k, v in loaded.items()} == {
        "nab-dev/artificialNoAnomaly": 5,
        "nab-dev/artificialWithAnomaly": 6,
        "nab-dev/realAdExchange": 6,
        "nab-dev/realTweets": 10,
    }
    assert not any(s.labels.any() for s in loaded["nab-dev/artificialNoAnomaly"])


def test_portfolio_benchmark_labels_its_incidents() -> None:
    series = datasets.portfolio_benchmark(quick=True)
    assert len(series) == datasets.PORTFOLIO_QUICK["customers"]
    assert sum(len(datasets.metrics.segments(s.labels)) for s in series) > 0
    assert all(s.dataset == "portfolio" for s in series)
