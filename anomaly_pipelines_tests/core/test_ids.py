"""``customer_key`` on hostile ids: safe as a file name, a Dagster partition key and an MLflow
model name, and never the same key for two different ids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dagster import DagsterInstance, StaticPartitionsDefinition
from mlflow.utils.validation import _validate_model_name

from anomaly_pipelines.core.ids import customer_key

HOSTILE = [
    "acme",
    "Acme",
    "ACME",
    "acme ",
    " acme",
    "../../etc/passwd",
    "..",
    ".",
    "a/b",
    "a\\b",
    "C:\\Windows\\System32",
    "name with spaces",
    "Müller GmbH",
    "Mu\u0308ller GmbH",  # the same text in decomposed form: a different id
    "顧客-東京",
    "emoji 🚀",
    "x" * 300,
    "x" * 299 + "y",
    "",
    "-leading-dash",
    "customer-001",
    "customer-001-h0123456789",  # looks like a hashed key: must not pass through unchanged
    "line\nbreak",
    "tab\tid",
    "nul\x00id",
    "comma,id",
    "colon:id",
    "percent%2Fid",
    "a" * 48,
    "a" * 49,
    "con",
    "CON",
    "...",
]
SAFE = re.compile(r"[a-z0-9][a-z0-9_-]*")


@pytest.mark.parametrize("customer_id", HOSTILE, ids=range(len(HOSTILE)))
def test_key_is_safe_and_stable(customer_id: str) -> None:
    key = customer_key(customer_id)
    assert SAFE.fullmatch(key), key
    assert 1 <= len(key) <= 48
    assert key == customer_key(customer_id)
    assert key not in (".", "..")


def test_keys_are_injective_even_case_insensitively() -> None:
    keys = [customer_key(c) for c in HOSTILE]
    assert len(set(keys)) == len(HOSTILE)
    # Lower-case only, so distinct keys stay distinct on case-insensitive file systems.
    assert len({k.casefold() for k in keys}) == len(HOSTILE)


def test_plain_ids_stay_readable() -> None:
    assert customer_key("customer-001") == "customer-001"
    assert customer_key("acme_eu-2") == "acme_eu-2"
    assert customer_key("Acme").startswith("acme-h")


def test_keys_work_as_file_names(tmp_path: Path) -> None:
    for number, customer_id in enumerate(HOSTILE):
        path = tmp_path / f"{customer_key(customer_id)}.json"
        path.write_text(str(number), encoding="utf-8")
        assert path.parent == tmp_path
    assert len(list(tmp_path.iterdir())) == len(HOSTILE)


def test_keys_work_as_dagster_partition_keys() -> None:
    keys = [customer_key(c) for c in HOSTILE]
    # Dagster rejects invalid substrings ("...", control characters) and duplicate keys here.
    assert StaticPartitionsDefinition(keys).get_partition_keys() == keys
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("customers", keys)
        assert sorted(instance.get_dynamic_partitions("customers")) == sorted(keys)


def test_keys_work_as_mlflow_model_names() -> None:
    for customer_id in HOSTILE:
        _validate_model_name(f"anomaly_pipelines-{customer_key(customer_id)}")
