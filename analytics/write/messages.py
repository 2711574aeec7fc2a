"""What crosses the writer's queue and its edge: the store's errors, its receipts, the messages
the writer thread takes, and the observer it drives (``analytics/write/store.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import duckdb

from analytics.write.observer import Changes
from processors.correlate import Routed
from processors.fold import InstanceState
from processors.state import InstanceId
from processors.types import SpanRecord

#: errors after which DuckDB has invalidated the whole database instance (every later call fails)
FATAL_ERRORS = (duckdb.FatalException, duckdb.InternalException)


class StoreError(Exception):
    """Base of the store's errors.

    StoreError
    ├── StoreUnavailable   retryable: the batch was not committed (answer UNAVAILABLE / 503)
    │   └── StoreClosed    the store is shutting down
    └── StoreOpenError     permanent: the database cannot be opened (locked, newer schema, …)
    """


class StoreUnavailable(StoreError):
    pass


class StoreClosed(StoreUnavailable):
    pass


class StoreOpenError(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class CommitReceipt:
    spans: int
    transitions: int


class ObserverProtocol(Protocol):
    """Runs inside the writer's transaction after each batch and tick (see analytics.write.observer)."""

    def restore(self, con: Any) -> None: ...

    def forget(self, instance: InstanceId) -> list[str]:
        """The instance's history was deleted: the ids of its anomalies that were open."""
        ...

    def plan(self, states: Sequence[InstanceState], now_ns: int) -> Changes:
        """Anomaly changes of the given instances, and their open counts (memory only)."""
        ...

    def write(self, con: Any, changes: Changes, now_ns: int) -> None:
        """Write planned changes inside the caller's transaction."""
        ...


@dataclass(slots=True)
class Request:
    records: Sequence[SpanRecord]
    future: Future[CommitReceipt]
    #: the latest event time of the request: the clock observes it once the batch committed
    event_ns: int = 0
    #: lake mode with roles, on a fold node: spans whose key an ingest node settled (``records``
    #: is then empty), and the hand-off's snapshot they were followed up to
    routed: Sequence[Routed] | None = None
    position: int | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """An explicit tick (``tick_now``): re-fold at most ``limit`` due instances (None: all)."""

    done: Future[CommitReceipt]
    limit: int | None


@dataclass(frozen=True, slots=True)
class Record:
    """Rows appended to a table the pipeline never writes (deliveries of alerts and actions),
    in a transaction of their own; ``done`` resolves once committed."""

    table: str
    rows: Any  # a pyarrow.Table whose columns are named as the table's
    done: Future[CommitReceipt]


@dataclass(frozen=True, slots=True)
class Stop:
    """Commit what is queued, then leave the writer thread."""


Message = Request | Tick | Record | Stop
