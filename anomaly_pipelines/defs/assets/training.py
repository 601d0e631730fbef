"""Training: the three models of every customer of a run, logged and registered in MLflow.

One training call covers every partition key of the run, so a batch run trains all customers'
LSTM autoencoders as one stacked Keras model (see ``core.models.lstm_autoencoder``) instead of a
Python loop over small models. The three assets hold small references to what MLflow registered
(name, version, run id); the models themselves live in the registry, where scoring loads the
``champion`` alias from.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from anomaly_pipelines.core.config import PipelineConfig
from anomaly_pipelines.core.series import frame_to_series
from anomaly_pipelines.defs.automation import CUSTOMER_DRIFT, training_condition
from anomaly_pipelines.defs.metadata import add_partition_metadata, markdown_table, md
from anomaly_pipelines.defs.partitions import customer_partitions
from anomaly_pipelines.defs.resources import MlflowRegistryResource, PipelineSettings

SINGLE_RUN = dg.BackfillPolicy.single_run()
TRAINING_PLOT_CUSTOMERS = 20


def training_plot(
    series: list[Any], fitted: Any, config: PipelineConfig, run_id: str, label: str = ""
) -> Path | None:
    """The freshly fitted models' scores over their own history, as one portfolio plot logged
    with the MLflow run: a reviewer comparing two trainings sees what each would have flagged."""
    if not fitted.calibrations:
        return None
    from anomaly_pipelines.core.detector import score_series
    from anomaly_pipelines.core.explain import find_incidents
    from anomaly_pipelines.core.plots import plot_portfolio

    scores = score_series(series, fitted, config)
    incidents = find_incidents(
        scores, config.explain.max_gap_steps, severity_pct=config.explain.severity_pct
    )
    directory = Path(config.output.directory) / "plots" / "training"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"training-{run_id[:8]}" + (f"-{label}" if label else "")
    return plot_portfolio(scores, incidents, directory / f"{name}.png", top_n=TRAINING_PLOT_CUSTOMERS)


MODEL_ASSETS = ("lstm_autoencoder", "isolation_forest", "local_outlier_factor")


def _current_champions(
    registry: Any, series: list[Any], config: PipelineConfig
) -> tuple[dict[str, str], Any]:
    """(customer -> champion version, their loaded models) before training; nothing when the
    promotion gate is off."""
    if not config.drift.gate_promotion or not series:
        return {}, None
    ids = [s.customer_id for s in series]
    versions = registry.champion_versions(ids)
    if not versions:
        return {}, None
    return versions, registry.load_champions(sorted(versions), config)


def _gate_promotions(
    context: AssetExecutionContext,
    registry: Any,
    series: list[Any],
    fitted: Any,
    champions: tuple[dict[str, str], Any],
    record: Any,
    config: PipelineConfig,
) -> list[Any]:
    """Champion/challenger (``core.promotion``): the new versions are scored against the old
    champions on the newest ``drift.holdout_days``; a worse one gives the alias back."""
    from anomaly_pipelines.core.alerts import OperationsStore
    from anomaly_pipelines.core.detector import score_series
    from anomaly_pipelines.core.feedback import training_exclusions
    from anomaly_pipelines.core.promotion import apply_decisions, decide

    versions, old_models = champions
    if not config.drift.gate_promotion or not record.model_versions:
        return []
    new_scores = score_series(
        [s for s in series if s.customer_id in record.model_versions], fitted, config
    )
    with_champion = [s for s in series if s.customer_id in versions]
    old_scores = (
        score_series(with_champion, old_models, config)
        if with_champion and old_models is not None
        else pd.DataFrame()
    )
    decisions = decide(
        new_scores,
        old_scores,
        record.model_versions,
        versions,
        holdout_days=config.drift.holdout_days,
        tolerance=config.drift.promotion_tolerance,
        confirmed=training_exclusions(OperationsStore.for_config(config)),
    )
    apply_decisions(registry, decisions)
    for d in decisions:
        context.log.info(
            f"{d.customer_id}: {'promoted' if d.promoted else 'champion kept'}: {d.reason}"
        )
    return decisions


def _feedback_series(
    context: AssetExecutionContext | dg.OpExecutionContext,
    series: list[Any],
    config: PipelineConfig,
) -> tuple[list[Any], list[Any]]:
    """``series`` as scoring sees it, and as training sees it.

    Days of incidents marked ``not-anomaly`` or ``planned`` are normal for both: history
    cleaning keeps them (``core.feedback.mark_declared_normal``). Days of incidents marked
    ``accurate`` are real anomalies: training replaces them by the usual level so the models do
    not learn them as normal (``core.feedback.exclude_from_training``), but the
    champion/challenger gate must judge on them as they happened; on the replaced values every
    model would miss them, and the gate's cost, which charges a missed confirmed day double,
    could not tell a model that catches them from one that does not."""
    from anomaly_pipelines.core.alerts import OperationsStore
    from anomaly_pipelines.core.feedback import exclude_from_training, mark_declared_normal

    store = OperationsStore.for_config(config)
    scored, marked = mark_declared_normal(series, store)
    if marked:
        context.log.info(
            f"feedback: {sum(marked.values())} step(s) of incidents marked not-anomaly or planned "
            f"kept as normal history, for {len(marked)} customer(s)"
        )
    trained, replaced = exclude_from_training(scored, store)
    if replaced:
        context.log.info(
            f"feedback: {sum(replaced.values())} step(s) of incidents marked accurate replaced "
            f"by their usual level before training, for {len(replaced)} customer(s)"
        )
    return scored, trained


def training_checkpoint_dir(config: PipelineConfig) -> Path:
    """Where a finished training waits until it is registered (``core.checkpoints``)."""
    return Path(config.output.directory) / "training_checkpoints"


def train_and_register(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    series: list[Any],
    config: PipelineConfig,
    registry: Any,
    run_label: str = "",
) -> tuple[list[Any], Any, Any, list[Any], float]:
    """Train ``series``, register one version per customer and gate the champions; shared by
    the customer assets (all keys of a run in one call) and ``cohort_batch_job`` (one cohort
    per step), so both train, checkpoint and promote the same way.

    Returns ``(series as scored, fitted, registry record, promotion decisions, training
    seconds)``: the series with feedback's declared-normal days marked, confirmed incidents as
    they happened (``_feedback_series``)."""
    from anomaly_pipelines.core.checkpoints import TrainingCheckpoint
    from anomaly_pipelines.core.detector import fit_detectors

    scored, series = _feedback_series(context, series, config)
    # The store first: a store that cannot be opened fails the run before the expensive part.
    registry.experiment_id()
    # The champions before this training: a new version must beat them to take the alias.
    champions = _current_champions(registry, series, config)
    checkpoint = TrainingCheckpoint(training_checkpoint_dir(config), series, config)
    saved = checkpoint.load()
    if saved is not None:
        fitted, training_seconds = saved
        context.log.info(
            f"registering the training saved at {checkpoint.path} (same customers, data and "
            "settings; its registration failed before), not training again"
        )
    else:
        started = time.perf_counter()
        fitted = fit_detectors(series, config, progress=context.log.info)
        training_seconds = time.perf_counter() - started
        checkpoint.save(fitted, training_seconds)
    label = f"{run_label}-" if run_label else ""
    plot = training_plot(series, fitted, config, context.run_id, run_label)
    tags = {"dagster_run_id": context.run_id, "dagster_job": context.job_name}
    if run_label:
        tags["dagster_step"] = run_label
    record = registry.log_training(
        fitted,
        run_name=f"dagster-{context.run_id[:8]}-{label}{len(series)}-customers",
        plots=[plot] if plot is not None else None,
        tags=tags,
        training_seconds=training_seconds,
    )
    checkpoint.discard()
    for cid, reason in fitted.skipped.items():
        context.log.warning(f"customer {cid!r} not trained: {reason}")
    decisions = _gate_promotions(context, registry, scored, fitted, champions, record, config)
    return scored, fitted, record, decisions, training_seconds


@dg.multi_asset(
    outs={
        "lstm_autoencoder": dg.AssetOut(
            kinds={"tensorflow", "mlflow"},
            description="Per-customer LSTM autoencoders (stacked Keras model), registered in MLflow.",
            automation_condition=training_condition(),
        ),
        "isolation_forest": dg.AssetOut(
            kinds={"sklearn", "mlflow"},
            description="Per-customer IsolationForest over training windows, registered in MLflow.",
            automation_condition=training_condition(),
        ),
        "local_outlier_factor": dg.AssetOut(
            kinds={"sklearn", "mlflow"},
            description="Per-customer LocalOutlierFactor (novelty mode), registered in MLflow.",
            automation_condition=training_condition(),
        ),
    },
    partitions_def=customer_partitions,
    backfill_policy=SINGLE_RUN,
    group_name="training",
    # Not read: the customers the newest model_drift lists are retrained (defs.automation).
    deps=[CUSTOMER_DRIFT],
)
def trained_models(
    context: AssetExecutionContext,
    customer_series: pd.DataFrame,
    pipeline_settings: PipelineSettings,
    mlflow_registry: MlflowRegistryResource,
) -> Iterator[dg.Output[dict[str, dict[str, Any]]]]:
    """Fit the three detectors on each customer's training part, learn its thresholds, then log
    one MLflow run (params, metrics) and register one model version per customer.

    The fitted detectors are saved before logging and deleted after it, so a registration that
    fails (store locked, disk full, a name conflict) does not cost the training: the retry of
    the same customers, data and settings registers the saved one."""
    config = pipeline_settings.config
    keys = list(context.partition_keys)
    series = [s for s in frame_to_series(customer_series) if s.key in keys]
    series, fitted, record, decisions, training_seconds = train_and_register(
        context, series, config, mlflow_registry.registry(config)
    )

    summary = fitted.training_summary()
    by_customer = summary.set_index("customer_id") if len(summary) else pd.DataFrame()
    refs: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in MODEL_ASSETS}
    for s in series:
        cid = s.customer_id
        base: dict[str, Any] = {
            "customer_id": cid,
            "registered_name": record.registered_names.get(cid),
            "version": record.model_versions.get(cid),
            "mlflow_run_id": record.run_id,
            "status": "trained" if cid in fitted.calibrations else "skipped",
            "reason": fitted.skipped.get(cid, ""),
        }
        for name in MODEL_ASSETS:
            refs[name][s.key] = {**base, "component": name}
        if cid in fitted.calibrations:
            cal = fitted.calibrations[cid]
            row = by_customer.loc[cid] if cid in by_customer.index else None
            refs["lstm_autoencoder"][s.key].update(
                window=cal.window,
                threshold=float(cal.lstm_notebook_threshold),
                train_loss=float(row["train_loss"]) if row is not None else None,
                val_loss=float(row["val_loss"]) if row is not None else None,
                epochs=int(row["epochs"]) if row is not None else None,
            )
            for name in ("isolation_forest", "local_outlier_factor"):
                refs[name][s.key]["threshold"] = float(cal.thresholds[name][1])

    for name in MODEL_ASSETS:
        add_partition_metadata(
            context,
            {
                key: {
                    f"customer_{k}": v for k, v in ref.items() if v is not None and k != "component"
                }
                for key, ref in refs[name].items()
            },
            asset_key=name,
        )
    common = {
        "challengers_promoted": sum(d.promoted for d in decisions),
        "champions_kept": sum(not d.promoted for d in decisions),
        "promotion_decisions": md(
            markdown_table(pd.DataFrame([d.as_dict() for d in decisions]), max_rows=50)
        ),
        "customers_trained": len(fitted.calibrations),
        "customers_skipped": len(fitted.skipped),
        "mlflow_run_id": record.run_id,
        "mlflow_experiment_id": str(record.experiment_id),
        "model_versions": md(
            markdown_table(
                pd.DataFrame(
                    [
                        {
                            "customer_id": c,
                            "registered_name": record.registered_names.get(c),
                            "version": v,
                        }
                        for c, v in sorted(record.model_versions.items())
                    ]
                )
            )
        ),
    }
    lstm_meta: dict[str, Any] = {
        **common,
        "training_seconds": round(training_seconds, 2),
        "epochs_config": config.lstm.epochs,
        "stacked_models": len(fitted.autoencoders),
    }
    if len(summary):
        lstm_meta.update(
            mean_train_loss=float(summary["train_loss"].mean()),
            mean_val_loss=float(summary["val_loss"].mean()),
            mean_epochs_run=float(summary["epochs"].mean()),
            training=md(markdown_table(summary)),
        )
    yield dg.Output(refs["lstm_autoencoder"], output_name="lstm_autoencoder", metadata=lstm_meta)
    for name, params in (
        ("isolation_forest", {"n_estimators": config.isolation_forest.n_estimators}),
        ("local_outlier_factor", {"n_neighbors": config.local_outlier_factor.n_neighbors}),
    ):
        thresholds = pd.DataFrame(
            [
                {"customer_id": ref["customer_id"], "threshold": ref.get("threshold")}
                for ref in refs[name].values()
            ]
        )
        yield dg.Output(
            refs[name],
            output_name=name,
            metadata={**common, **params, "thresholds": md(markdown_table(thresholds))},
        )
