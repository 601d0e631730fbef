"""Registered models: one per customer, their versions, and the alias that names the champion.

Registered models are named ``<mlflow.model_prefix>.<customer_key(id)>`` (for example
``anomaly_pipelines.customer-001``; an id such as ``Acme/EU`` becomes
``anomaly_pipelines.acme-eu-h<hash>``, see ``core.ids``), so the registry UI lists and searches
customers directly even with thousands of them, and the untrusted id never reaches a name
unescaped. Each carries the tags ``customer_id`` (the exact id) and ``project``. A version's
source is the logged model of the training that fitted the customer (``models:/<model_id>``,
shared by every customer of that training: registering copies nothing). Promotion uses the
alias ``mlflow.alias`` (``champion``), never stages; a new training takes the alias unless a
newer version already holds it, and moving the alias back (``set_alias``) rolls a customer back.

The "is this version newer than the champion?" check and the alias update happen under a file
lock next to a SQLite store, so concurrent trainings of one customer neither lose a version nor
leave the alias on the older one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from anomaly_pipelines.core.config import MlflowConfig, PipelineConfig
from anomaly_pipelines.core.ids import customer_key
from anomaly_pipelines.core.registry.store import PROJECT, MlflowStore, retry

if TYPE_CHECKING:
    from anomaly_pipelines.core.detector import FittedDetectors
    from anomaly_pipelines.core.registry.runs import TrainingRecord

T = TypeVar("T")

_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*)*")
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")
# MLflow's alias rule: word characters and '-'; "latest" and "v<number>" are reserved.
_ALIAS = re.compile(r"[\w-]{1,255}")
_RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)


@dataclass(frozen=True)
class VersionRequest:
    """One model version to register for a customer (see ``ModelRegistry.register_versions``)."""

    customer_id: str
    source: str  # usually ``models:/<model_id>`` of a logged model
    run_id: str
    model_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


class ModelRegistry:
    """Each customer's registered model, versions and champion alias in one MLflow store; logs
    trainings (``core.registry.runs``) and loads champions (``core.registry.champions``)."""

    # Runs with more customers than this get the summary table only, not per-customer metrics
    # (thousands of metric keys make the MLflow run page unusable).
    per_customer_metrics_limit: int = 50
    # Up to this many customers are looked up one call each; beyond it, registered models are
    # listed in pages (one call per ``page_size`` customers).
    direct_lookup_limit: int = 50
    page_size: int = 1000
    # Requests in flight at once to a tracking server (``_each``).
    server_requests: int = 8

    def __init__(self, config: MlflowConfig) -> None:
        if not _PREFIX.fullmatch(config.model_prefix):
            raise ValueError(
                f"mlflow.model_prefix {config.model_prefix!r} is not a valid model-name prefix: "
                "use letters, digits, '_', '-' and '.'-separated parts"
            )
        if not _ALIAS.fullmatch(config.alias) or _RESERVED_ALIAS.fullmatch(config.alias):
            raise ValueError(
                f"mlflow.alias {config.alias!r} is not a usable MLflow alias: use letters, digits, "
                "'_' and '-', and not the reserved 'latest' or 'v<number>'"
            )
        self.config = config
        self.store = MlflowStore(config)

    @property
    def tracking_uri(self) -> str:
        return self.store.tracking_uri

    def client(self) -> MlflowClient:
        return self.store.client()

    def experiment_id(self) -> str:
        """The experiment's id (created on first use); see ``MlflowStore.experiment_id``."""
        return self.store.experiment_id()

    def registered_name(self, customer_id: str) -> str:
        return f"{self.config.model_prefix}.{customer_key(customer_id)}"

    # ------------------------------------------------------------------ the other jobs

    def log_training(
        self,
        fitted: FittedDetectors,
        *,
        run_name: str,
        plots: list[Path] | None = None,
        tags: dict[str, str] | None = None,
        training_seconds: float | None = None,
    ) -> TrainingRecord:
        """Log one training as one MLflow run and register a version per trained customer
        (see ``core.registry.runs.log_training``)."""
        from anomaly_pipelines.core.registry import runs

        return runs.log_training(
            self, fitted, run_name=run_name, plots=plots, tags=tags, training_seconds=training_seconds
        )

    def log_report(
        self, paths: list[Path], *, run_name: str, tags: dict[str, str] | None = None
    ) -> str:
        """Log report files as their own run next to the trainings; returns the run id."""
        from anomaly_pipelines.core.registry import runs

        return runs.log_report(self, paths, run_name=run_name, tags=tags)

    def load_champions(self, customer_ids: list[str], config: PipelineConfig) -> FittedDetectors:
        """The champions of ``customer_ids`` that can score under ``config``, as one model (see
        ``core.registry.champions.load_champions``)."""
        from anomaly_pipelines.core.registry import champions

        return champions.load_champions(self, customer_ids, config)

    # ------------------------------------------------------------------ registering versions

    def register_version(
        self,
        customer_id: str,
        *,
        source: str,
        run_id: str,
        tags: dict[str, str] | None = None,
        model_id: str | None = None,
    ) -> str:
        """Register one version (see ``register_versions``); returns its number."""
        request = VersionRequest(customer_id, source, run_id, model_id, dict(tags or {}))
        return self.register_versions([request])[customer_id]

    def register_versions(self, requests: list[VersionRequest]) -> dict[str, str]:
        """Add one version per request to the customer's registered model (created on first
        use) and give it the alias unless a newer version already holds it.

        Existing models and current aliases are read in bulk (``_lookup``), so a batch costs
        about three writes per customer: model (first time only), version, alias.
        """
        customers = [r.customer_id for r in requests]
        if len(set(customers)) != len(customers):
            raise ValueError("register_versions(): each customer may appear only once per call")
        client = self.client()
        names = {cid: self.registered_name(cid) for cid in customers}
        existing = self._registered_models(client, list(names.values()))
        for cid, name in names.items():
            owner = existing[name].tags.get("customer_id") if name in existing else None
            if owner is not None and owner != cid:
                raise ValueError(
                    f"registered model {name!r} belongs to customer {owner!r}, not {cid!r}; "
                    "another project may share mlflow.model_prefix in this store"
                )
        self._each(
            [
                lambda cid=cid, name=name: self._create_registered_model(client, name, cid)
                for cid, name in names.items()
                if name not in existing
            ]
        )
        versions = self._each(
            [
                lambda r=r: self._create_version(
                    client,
                    names[r.customer_id],
                    r.source,
                    r.run_id,
                    {**r.tags, "customer_id": r.customer_id, "run_id": r.run_id},
                    r.model_id,
                )
                for r in requests
            ]
        )
        created = dict(zip(customers, versions, strict=True))
        alias = self.config.alias
        with self.store.lock("alias"):
            current = self._registered_models(client, list(names.values()))
            holders = {n: current[n].aliases.get(alias) if n in current else None for n in names.values()}
            self._each(
                [
                    lambda name=names[cid], version=version: retry(
                        lambda: client.set_registered_model_alias(name, alias, version), "set alias"
                    )
                    for cid, version in created.items()
                    if holders[names[cid]] is None or int(holders[names[cid]]) < int(version)
                ]
            )
        return created

    def _each(self, calls: list[Callable[[], T]]) -> list[T]:
        """Results of ``calls`` in order. A tracking server is asked up to ``server_requests``
        at a time: MLflow's REST API has no batch call for models, versions or aliases, so one
        after the other a customer costs three round trips of waiting; a SQLite store takes one
        writer at a time, so there they run in turn."""
        if len(calls) < 2 or not self.tracking_uri.startswith(("http://", "https://")):
            return [call() for call in calls]
        with ThreadPoolExecutor(min(self.server_requests, len(calls))) as pool:
            return list(pool.map(lambda call: call(), calls))

    def _create_registered_model(self, client: MlflowClient, name: str, customer_id: str) -> None:
        try:
            retry(
                lambda: client.create_registered_model(
                    name,
                    tags={"customer_id": customer_id, "project": PROJECT},
                    description=f"Anomaly detectors of customer {customer_id!r}.",
                ),
                "create model",
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # else: a parallel run made it
                raise

    def _create_version(
        self,
        client: MlflowClient,
        name: str,
        source: str,
        run_id: str,
        tags: dict[str, str],
        model_id: str | None,
    ) -> str:
        # A retry after "database is locked" must not add a second version if the first attempt
        # did land, so each registration carries its own id and a retry looks for it first.
        registration = uuid.uuid4().hex
        tags = {**tags, "registration_id": registration}
        attempts = 0

        def attempt() -> str:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                found = client.search_model_versions(
                    f"name = '{name}' and run_id = '{run_id}' "
                    f"and tags.registration_id = '{registration}'"
                )
                if found:
                    return str(found[0].version)
            version = client.create_model_version(
                name, source, run_id=run_id, tags=tags, model_id=model_id, await_creation_for=0
            )
            return str(version.version)

        return retry(attempt, f"create version of {name}")

    # ------------------------------------------------------------------ aliases and versions

    def set_alias(self, customer_id: str, version: str) -> None:
        """Point the customer's alias at ``version`` (a rollback or a manual promotion)."""
        client = self.client()
        name = self.registered_name(customer_id)
        with self.store.lock("alias"):
            try:
                retry(
                    lambda: client.set_registered_model_alias(name, self.config.alias, str(version)),
                    "set alias",
                )
            except MlflowException as exc:
                raise ValueError(
                    f"cannot point alias {self.config.alias!r} of {name!r} (customer "
                    f"{customer_id!r}) at version {version!r}: {exc.message}"
                ) from exc

    def versions(self, customer_id: str) -> list[str]:
        """All version numbers of the customer's registered model, oldest first."""
        client = self.client()
        name = self.registered_name(customer_id)
        found = _pages(
            lambda token: client.search_model_versions(
                f"name = '{name}'", max_results=self.page_size, page_token=token
            ),
            "search versions",
        )
        return [str(v) for v in sorted({int(mv.version) for mv in found})]

    def champion_version(self, customer_id: str) -> str | None:
        """The version the alias points at, or None."""
        return self.champion_versions([customer_id]).get(customer_id)

    def champion_versions(self, customer_ids: list[str]) -> dict[str, str]:
        """Alias targets of many customers at once; customers without one are left out."""
        return {cid: str(mv.version) for cid, mv in self.champion_model_versions(customer_ids).items()}

    def champion_model_versions(self, customer_ids: Iterable[str]) -> dict[str, ModelVersion]:
        """The champion ``ModelVersion`` of each customer that has one. Registered models
        carry their aliases and usually the champion is also the latest version, which the
        listing includes; otherwise the version is read on its own."""
        client = self.client()
        alias = self.config.alias
        wanted = {self.registered_name(cid): cid for cid in dict.fromkeys(customer_ids)}

        def from_listing(model: RegisteredModel) -> ModelVersion | str | None:
            if alias not in model.aliases:
                return None
            version = str(model.aliases[alias])
            latest = [mv for mv in model.latest_versions or [] if str(mv.version) == version]
            return latest[0] if latest else version

        found = self._lookup(
            client, list(wanted), lambda name: client.get_model_version_by_alias(name, alias), from_listing
        )
        out: dict[str, ModelVersion] = {}
        for name, hit in found.items():
            if isinstance(hit, str):  # the champion is not the latest version: read it
                hit = retry(
                    lambda name=name, version=hit: client.get_model_version(name, version),
                    "read version",
                )
            out[wanted[name]] = hit
        return out

    def _registered_models(
        self, client: MlflowClient, names: list[str]
    ) -> dict[str, RegisteredModel]:
        """The registered models among ``names`` that exist, with their tags and aliases."""
        return self._lookup(client, names, client.get_registered_model, lambda model: model)

    def _lookup(
        self,
        client: MlflowClient,
        names: list[str],
        direct: Callable[[str], T],
        from_listing: Callable[[RegisteredModel], T | None],
    ) -> dict[str, T]:
        """Something about each of the registered models ``names`` that exist: a few are asked
        for directly (``direct``, one call each; a missing one is left out), many are read from
        a paged listing of the prefix (``from_listing``, one call per ``page_size`` models;
        None leaves a model out)."""
        wanted = set(names)
        out: dict[str, T] = {}
        if len(wanted) <= self.direct_lookup_limit:

            def read(name: str) -> T | None:
                try:
                    return retry(lambda: direct(name), "read model")
                except MlflowException as exc:
                    if exc.error_code not in _MISSING:
                        raise
                    return None

            ordered = sorted(wanted)
            found = self._each([lambda name=name: read(name) for name in ordered])
            return {name: hit for name, hit in zip(ordered, found, strict=True) if hit is not None}
        listing = _pages(
            lambda token: client.search_registered_models(
                filter_string=f"name LIKE '{self.config.model_prefix}.%'",
                max_results=self.page_size,
                page_token=token,
            ),
            "list registered models",
        )
        for model in listing:
            if model.name in wanted:  # LIKE treats '_' as a wildcard: keep exact names only
                hit = from_listing(model)
                if hit is not None:
                    out[model.name] = hit
        return out


def _pages(search: Callable[[str | None], list[T]], what: str) -> Iterator[T]:
    """Every item of a paged MLflow search, one retried call per page."""
    token: str | None = None
    while True:
        page = retry(lambda token=token: search(token), what)
        yield from page
        token = page.token  # type: ignore[attr-defined]
        if not token:
            return
