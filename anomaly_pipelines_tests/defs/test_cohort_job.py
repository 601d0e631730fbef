"""cohort_batch_job in-process on the laptop default (SQLite): what it leaves behind. The
same job on celery workers against real services is in anomaly_pipelines_tests/deploy/."""

from pathlib import Path

import dagster as dg
import pandas as pd

from anomaly_pipelines.definitions import build_definitions
from anomaly_pipelines_tests.defs.conftest import write_config

CUSTOMERS = ["customer-001", "customer-002", "customer-003", "customer-004"]


def test_cohorts_train_register_and_store_scores_without_partitions_when_asked(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path, {"source": {"synthetic": {"customers": len(CUSTOMERS), "days": 120}}}
    )
    defs = build_definitions(str(config))
    with dg.DagsterInstance.ephemeral() as instance:
        assert defs.resolve_job_def("ingest_job").execute_in_process(instance=instance).success
        result = defs.resolve_job_def("cohort_batch_job").execute_in_process(
            instance=instance,
            run_config={
                "ops": {
                    "plan_cohorts": {
                        "config": {
                            "customers": CUSTOMERS[1:],
                            "cohort_size": 2,
                            "customer_partitions": False,
                        }
                    }
                }
            },
        )
        assert result.success
        cohorts = [r for r in result.output_for_node("train_cohort").values()]
        assert sorted(c["cohort"] for c in cohorts) == ["cohort_00000", "cohort_00001"]
        assert sorted(cid for c in cohorts for cid in c["trained"]) == CUSTOMERS[1:]
        # Partitions off: no per-customer materialization recorded...
        assert not instance.get_materialized_partitions(dg.AssetKey("anomaly_scores"))
    # ...but every trained customer's scores stored where the report reads them, and only theirs.
    stored = tmp_path / "outputs" / "storage" / "anomaly_scores"
    assert sorted(p.stem for p in stored.glob("*.parquet")) == CUSTOMERS[1:]
    scores = pd.read_parquet(stored / "customer-002.parquet")
    assert len(scores) == 120 and set(scores["customer_id"]) == {"customer-002"}
    assert set(scores["status"]) == {"warmup", "scored"}  # trained, not "unscored"
    from anomaly_pipelines.core.config import MlflowConfig
    from anomaly_pipelines.core.registry import ModelRegistry

    settings = defs.resources["pipeline_settings"].config.mlflow
    registry = ModelRegistry(MlflowConfig(**settings.model_dump()))
    assert registry.champion_versions(CUSTOMERS) == dict.fromkeys(CUSTOMERS[1:], "1")
