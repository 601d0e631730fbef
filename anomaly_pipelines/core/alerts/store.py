"""The operations store: incidents seen by the daily runs, alert deliveries and feedback.

Three tables in one SQL database, written with SQLAlchemy Core and nothing dialect-specific, so
the same code runs on the default SQLite file and on Postgres (``alerts.store_url``). Every
delivery row has a unique key (incident x subscription x notice), which is what makes a re-run of
the same day send nothing twice. Rows hold subscription *names*, never URLs, tokens or passwords.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from anomaly_pipelines.core.config import PipelineConfig

METADATA = sa.MetaData()

incidents_table = sa.Table(
    "incidents",
    METADATA,
    sa.Column("incident_id", sa.String(200), primary_key=True),
    sa.Column("customer_id", sa.String(600), nullable=False, index=True),
    sa.Column("start", sa.String(40), nullable=False),
    sa.Column("end", sa.String(40), nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("direction", sa.String(20), nullable=False),
    sa.Column("dimension", sa.String(100), nullable=False, default=""),
    sa.Column("dimension_value", sa.String(600), nullable=False, default=""),
    sa.Column("impact", sa.Float, nullable=False),
    sa.Column("impact_pct", sa.Float, nullable=True),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("currency", sa.String(10), nullable=False),
    sa.Column("headline", sa.Text, nullable=False, default=""),
    sa.Column("status", sa.String(20), nullable=False),  # open / ended
    sa.Column("first_seen", sa.String(40), nullable=False),  # as-of day of the first run seeing it
    sa.Column("last_seen", sa.String(40), nullable=False),
    sa.Column("facts", sa.Text, nullable=False, default="{}"),
)

deliveries_table = sa.Table(
    "alert_deliveries",
    METADATA,
    # subscription|incident|kind|qualifier: the idempotency key.
    sa.Column("key", sa.String(400), primary_key=True),
    sa.Column("subscription", sa.String(200), nullable=False, index=True),
    sa.Column("channel", sa.String(20), nullable=False),
    sa.Column(
        "kind", sa.String(20), nullable=False
    ),  # opened/update/ended/no_data/missing_file/digest/test
    sa.Column("incident_id", sa.String(200), nullable=False, default="", index=True),
    sa.Column("customer_id", sa.String(600), nullable=False, default=""),
    sa.Column("as_of", sa.String(40), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # the message as JSON (no secrets)
    # pending (immediate, not yet sent) / queued (waits for a digest) / sent / failed / suppressed
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text, nullable=False, default=""),
    sa.Column("digest_key", sa.String(400), nullable=False, default=""),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
    sa.Column("sent_at", sa.String(40), nullable=True),
)

feedback_table = sa.Table(
    "feedback",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.String(200), nullable=False, index=True),
    sa.Column("customer_id", sa.String(600), nullable=False, default=""),
    sa.Column("label", sa.String(20), nullable=False),  # accurate / not-anomaly / planned
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("author", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("incident_start", sa.String(40), nullable=False, default=""),
    sa.Column("incident_end", sa.String(40), nullable=False, default=""),
    sa.Column("direction", sa.String(20), nullable=False, default=""),
    sa.Column("dimension", sa.String(100), nullable=False, default=""),
    sa.Column("dimension_value", sa.String(600), nullable=False, default=""),
)

_ENGINES: dict[str, sa.Engine] = {}
_LOCK = threading.Lock()


def now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def store_url(config: PipelineConfig) -> str:
    """``alerts.store_url``, or a SQLite file next to the run's other outputs."""
    if config.alerts.store_url:
        return config.alerts.store_url
    path = Path(config.output.directory).resolve() / "operations.db"
    return f"sqlite:///{path}"


def _engine(url: str) -> sa.Engine:
    with _LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                # Several processes (runs, the CLI) share the file: wait for a lock, don't fail.
                engine = sa.create_engine(url, connect_args={"timeout": 30})
            else:
                engine = sa.create_engine(url, pool_pre_ping=True)
            METADATA.create_all(engine)
            _ENGINES[url] = engine
        return engine


class OperationsStore:
    """Incidents, deliveries and feedback in one database (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)

    @classmethod
    def for_config(cls, config: PipelineConfig) -> OperationsStore:
        return cls(store_url(config))

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- incidents -------------------------------------------------------------------------

    def upsert_incident(self, row: dict[str, Any]) -> None:
        """Insert an incident or update what changes as it goes on (end, impact, status...);
        ``first_seen`` is kept."""
        values = dict(row)
        with self._begin() as conn:
            found = conn.execute(
                sa.select(incidents_table.c.first_seen).where(
                    incidents_table.c.incident_id == values["incident_id"]
                )
            ).first()
            if found is None:
                try:
                    with conn.begin_nested():
                        conn.execute(incidents_table.insert().values(**values))
                    return
                except IntegrityError:
                    pass  # another writer inserted it between our read and write
            values.pop("first_seen", None)
            conn.execute(
                incidents_table.update()
                .where(incidents_table.c.incident_id == values.pop("incident_id"))
                .values(**values)
            )

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        with self._begin() as conn:
            row = conn.execute(
                sa.select(incidents_table).where(incidents_table.c.incident_id == incident_id)
            ).first()
        return dict(row._mapping) if row is not None else None

    def incidents(self) -> pd.DataFrame:
        with self._begin() as conn:
            rows = conn.execute(sa.select(incidents_table).order_by(incidents_table.c.start))
            return pd.DataFrame([dict(r._mapping) for r in rows], columns=incidents_table.c.keys())

    # -- deliveries ------------------------------------------------------------------------

    def add_delivery(self, row: dict[str, Any]) -> bool:
        """Insert a delivery row unless its key exists; True when it was new."""
        stamp = now_text()
        values = {
            "attempts": 0,
            "last_error": "",
            "digest_key": "",
            "created_at": stamp,
            "updated_at": stamp,
            **row,
        }
        values["payload"] = json.dumps(values["payload"], ensure_ascii=False, sort_keys=True)
        with self._begin() as conn:
            exists = conn.execute(
                sa.select(deliveries_table.c.key).where(deliveries_table.c.key == values["key"])
            ).first()
            if exists is not None:
                return False
            try:
                with conn.begin_nested():
                    conn.execute(deliveries_table.insert().values(**values))
            except IntegrityError:
                return False
        return True

    def deliveries(
        self,
        *,
        subscription: str | None = None,
        statuses: tuple[str, ...] | None = None,
        incident_id: str | None = None,
    ) -> pd.DataFrame:
        query = sa.select(deliveries_table).order_by(
            deliveries_table.c.created_at, deliveries_table.c.key
        )
        if subscription is not None:
            query = query.where(deliveries_table.c.subscription == subscription)
        if statuses is not None:
            query = query.where(deliveries_table.c.status.in_(statuses))
        if incident_id is not None:
            query = query.where(deliveries_table.c.incident_id == incident_id)
        with self._begin() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        frame = pd.DataFrame(rows, columns=deliveries_table.c.keys())
        if len(frame):
            frame["payload"] = frame["payload"].map(json.loads)
        return frame

    def update_delivery(self, key: str, **values: Any) -> None:
        values["updated_at"] = now_text()
        with self._begin() as conn:
            conn.execute(
                deliveries_table.update().where(deliveries_table.c.key == key).values(**values)
            )

    def claim(self, key: str, statuses: tuple[str, ...], stale_before: str) -> bool:
        """Mark a row ``sending`` if it is in ``statuses`` (or was left ``sending`` before
        ``stale_before`` by a run that died): True for exactly one of several concurrent runs,
        so two runs of the same day (a backfill, a retry) never both send it."""
        with self._begin() as conn:
            result = conn.execute(
                deliveries_table.update()
                .where(deliveries_table.c.key == key)
                .where(
                    deliveries_table.c.status.in_(statuses)
                    | (
                        (deliveries_table.c.status == "sending")
                        & (deliveries_table.c.updated_at < stale_before)
                    )
                )
                .values(status="sending", updated_at=now_text())
            )
            return result.rowcount == 1

    def set_digest(self, keys: list[str], digest_key: str) -> None:
        if not keys:
            return
        with self._begin() as conn:
            conn.execute(
                deliveries_table.update()
                .where(deliveries_table.c.key.in_(keys))
                .values(digest_key=digest_key, updated_at=now_text())
            )

    # -- feedback --------------------------------------------------------------------------

    def add_feedback(self, row: dict[str, Any]) -> int:
        with self._begin() as conn:
            result = conn.execute(feedback_table.insert().values(**row))
            return int(result.inserted_primary_key[0])

    def feedback(self, customer_id: str | None = None) -> pd.DataFrame:
        query = sa.select(feedback_table).order_by(feedback_table.c.id)
        if customer_id is not None:
            query = query.where(feedback_table.c.customer_id == customer_id)
        with self._begin() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        return pd.DataFrame(rows, columns=feedback_table.c.keys())


def dispose_engines() -> None:
    """Close pooled connections (tests deleting their temp directories)."""
    with _LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()
