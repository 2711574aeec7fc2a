"""Numbered schema migrations of the coordstate database (docs/architecture.md: the SQL contract).

Public, stable names: ``transitions``, ``instances``, ``instance_history``, ``spans``,
``anomalies`` and the table macro ``state_at(ts)``. Tables whose names start with ``_`` are
internal (buffers persisted for crash safety) and may change between versions.

All timestamps are UTC. ``transitions.event_time`` and the span times keep OTLP's nanoseconds.
"""

from __future__ import annotations

from typing import Any

#: the SQL contract's macros and views over the public tables (also created over the partitions
#: of a lake with roles: analytics/write/shards.py)
STATE_AT = """
        CREATE MACRO state_at(ts) AS TABLE
            SELECT workflow, instance_key, status, valid_from, valid_to
            FROM instance_history
            WHERE valid_from <= CAST(ts AS TIMESTAMP)
              AND (valid_to IS NULL OR valid_to > CAST(ts AS TIMESTAMP));
"""
ANOMALY_TIME = """
        -- time each instance spent with at least one open anomaly (overlaps merged)
        CREATE VIEW anomaly_time AS
        WITH a AS (
            SELECT workflow, instance_key, opened_at AS s, coalesce(resolved_at, now()::TIMESTAMP) AS e
            FROM anomalies
        ), b AS (
            SELECT *, max(e) OVER (PARTITION BY workflow, instance_key ORDER BY s, e
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_e
            FROM a
        ), c AS (
            SELECT *, sum(CASE WHEN prev_e IS NULL OR s > prev_e THEN 1 ELSE 0 END)
                      OVER (PARTITION BY workflow, instance_key ORDER BY s, e) AS island
            FROM b
        ), d AS (
            SELECT workflow, instance_key, island, min(s) AS s, max(e) AS e FROM c GROUP BY ALL
        )
        SELECT workflow, instance_key, sum(epoch(e - s)) AS seconds_with_open_anomaly
        FROM d GROUP BY ALL;
"""
CONVERGENCE = """
        CREATE OR REPLACE MACRO convergence(bucket) AS TABLE
            SELECT i.workflow,
                   time_bucket(bucket, i.started_at) AS window_start,
                   count(*) AS started,
                   count(*) FILTER (WHERE i.status = 'converged') AS converged,
                   count(*) FILTER (WHERE i.status = 'failed') AS failed,
                   count(*) FILTER (WHERE i.status = 'compensated') AS compensated,
                   count(*) FILTER (WHERE i.status = 'degraded') AS degraded,
                   count(*) FILTER (WHERE i.status = 'diverged') AS diverged,
                   count(*) FILTER (WHERE i.status = 'stalled') AS stalled,
                   count(*) FILTER (WHERE i.status = 'running') AS running,
                   round(count(*) FILTER (WHERE i.status IN ('converged', 'failed', 'compensated')) / count(*), 4)
                       AS convergence_rate,
                   quantile_cont(epoch(i.converged_at - i.started_at), 0.50) AS p50_seconds,
                   quantile_cont(epoch(i.converged_at - i.started_at), 0.95) AS p95_seconds,
                   quantile_cont(epoch(i.converged_at - i.started_at), 0.99) AS p99_seconds,
                   coalesce(sum(t.seconds_with_open_anomaly), 0) AS seconds_with_open_anomaly
            FROM instances i
            LEFT JOIN anomaly_time t USING (workflow, instance_key)
            GROUP BY ALL
            ORDER BY window_start, workflow;
"""

#: instances per workflow and status, summed from the writers' deltas (the Overview reads this
#: instead of grouping every instance row); ``{source}``: ``_status_counts`` or a union of them
INSTANCE_COUNTS = """
        CREATE VIEW instance_counts AS
            SELECT workflow, status, sum(instances)::BIGINT AS instances
            FROM {source}
            GROUP BY workflow, status
            HAVING sum(instances) <> 0;
"""

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "coordination history",
        """
        CREATE TABLE transitions (
            workflow      VARCHAR NOT NULL,
            instance_key  VARCHAR NOT NULL,
            step          VARCHAR NOT NULL,
            state         VARCHAR NOT NULL,   -- started | completed | failed | compensated
            event_time    TIMESTAMP_NS NOT NULL,
            observed_at   TIMESTAMP NOT NULL,
            trace_id      VARCHAR NOT NULL,
            span_id       VARCHAR NOT NULL,
            service       VARCHAR NOT NULL,
            source        VARCHAR NOT NULL     -- span | event:<name>
        );
        CREATE TABLE instances (
            workflow       VARCHAR NOT NULL,
            instance_key   VARCHAR NOT NULL,
            status         VARCHAR NOT NULL,  -- processors.types.InstanceStatus (README: statuses)
            steps          MAP(VARCHAR, VARCHAR) NOT NULL,
            started_at     TIMESTAMP NOT NULL,
            updated_at     TIMESTAMP NOT NULL,
            converged_at   TIMESTAMP,
            open_anomalies INTEGER NOT NULL DEFAULT 0,
            trace_ids      VARCHAR[] NOT NULL,
            next_due_at    TIMESTAMP          -- since migration 6 (a new database has it from here)
        );
        CREATE TABLE instance_history (
            workflow      VARCHAR NOT NULL,
            instance_key  VARCHAR NOT NULL,
            status        VARCHAR NOT NULL,
            valid_from    TIMESTAMP NOT NULL,
            valid_to      TIMESTAMP          -- NULL: still the status
        );
        CREATE TABLE spans (
            workflow       VARCHAR NOT NULL,
            instance_key   VARCHAR,           -- NULL when the span never got a key (unkeyed)
            disposition    VARCHAR NOT NULL,  -- keyed | orphan | unkeyed
            steps          VARCHAR[] NOT NULL,
            trace_id       VARCHAR NOT NULL,
            span_id        VARCHAR NOT NULL,
            parent_span_id VARCHAR NOT NULL,
            service        VARCHAR NOT NULL,
            name           VARCHAR NOT NULL,
            start_time     TIMESTAMP_NS NOT NULL,
            end_time       TIMESTAMP_NS NOT NULL,
            status         VARCHAR NOT NULL,  -- unset | ok | error (the span status code)
            attributes     MAP(VARCHAR, VARCHAR) NOT NULL,  -- only attributes the model reads
            observed_at    TIMESTAMP NOT NULL
        );
        CREATE TABLE _pending (
            workflow      VARCHAR NOT NULL,
            trace_id      VARCHAR NOT NULL,
            span_id       VARCHAR NOT NULL,
            instance_key  VARCHAR,
            arrived_ns    BIGINT NOT NULL,
            payload       VARCHAR NOT NULL
        );
        CREATE TABLE _trace_keys (
            workflow      VARCHAR NOT NULL,
            trace_id      VARCHAR NOT NULL,
            instance_key  VARCHAR NOT NULL,
            learned_at    TIMESTAMP NOT NULL
        );
        """
        + STATE_AT,
    ),
)

MIGRATIONS += (
    (
        2,
        "observer: anomalies, convergence",
        """
        CREATE TABLE anomalies (
            anomaly_id       VARCHAR NOT NULL,
            workflow         VARCHAR NOT NULL,
            instance_key     VARCHAR NOT NULL,
            kind             VARCHAR NOT NULL,  -- missing_step | out_of_order | duplicate_action | ...
            step             VARCHAR NOT NULL,
            severity         VARCHAR NOT NULL,  -- warning | critical
            opened_at        TIMESTAMP NOT NULL,
            resolved_at      TIMESTAMP,         -- NULL: still open
            message          VARCHAR NOT NULL,
            suggested_action VARCHAR NOT NULL,
            evidence         STRUCT(trace_id VARCHAR, span_id VARCHAR, what VARCHAR)[] NOT NULL,
            detected_at      TIMESTAMP NOT NULL
        );
        """
        + ANOMALY_TIME
        + """
        -- convergence per workflow and time window, e.g. SELECT * FROM convergence(INTERVAL 1 MINUTE)
        CREATE MACRO convergence(bucket) AS TABLE
            SELECT i.workflow,
                   time_bucket(bucket, i.started_at) AS window_start,
                   count(*) AS started,
                   count(*) FILTER (WHERE i.status = 'converged') AS converged,
                   count(*) FILTER (WHERE i.status = 'compensated') AS compensated,
                   count(*) FILTER (WHERE i.status = 'diverged') AS diverged,
                   count(*) FILTER (WHERE i.status = 'stalled') AS stalled,
                   count(*) FILTER (WHERE i.status = 'running') AS running,
                   round(count(*) FILTER (WHERE i.status IN ('converged', 'compensated')) / count(*), 4)
                       AS convergence_rate,
                   quantile_cont(epoch(i.converged_at - i.started_at), 0.50) AS p50_seconds,
                   quantile_cont(epoch(i.converged_at - i.started_at), 0.95) AS p95_seconds,
                   quantile_cont(epoch(i.converged_at - i.started_at), 0.99) AS p99_seconds,
                   coalesce(sum(t.seconds_with_open_anomaly), 0) AS seconds_with_open_anomaly
            FROM instances i
            LEFT JOIN anomaly_time t USING (workflow, instance_key)
            GROUP BY ALL
            ORDER BY window_start, workflow;
        """,
    ),
)

MIGRATIONS += (
    (
        3,
        "honest statuses: failed and degraded",
        """
        -- a clean failure (nothing needed undoing) is 'failed', no longer a vacuous 'compensated';
        -- a process that went past a failed step is 'degraded'. Live instances are re-folded at
        -- start-up; this relabels the quiet ones the fold will not see again.
        UPDATE instance_history SET status = 'failed'
        WHERE status = 'compensated' AND (workflow, instance_key) IN (
            SELECT workflow, instance_key FROM instances
            WHERE status = 'compensated' AND NOT list_contains(map_values(steps), 'compensated'));
        UPDATE instances SET status = 'failed'
        WHERE status = 'compensated' AND NOT list_contains(map_values(steps), 'compensated');
        """
        + CONVERGENCE,
    ),
)

MIGRATIONS += (
    (
        4,
        "model health: drift findings per step",
        """
        -- one row per workflow step, rewritten by the writer when it changes (processors/health.py)
        CREATE TABLE model_health (
            workflow                VARCHAR NOT NULL,
            step                    VARCHAR NOT NULL,
            matched                 BIGINT NOT NULL,   -- transitions this step produced
            last_matched_at         TIMESTAMP,         -- event time of the latest; NULL: never
            instances_without_match INTEGER NOT NULL,  -- started since, past the step's expected time
            drifting                BOOLEAN NOT NULL,
            hint                    VARCHAR NOT NULL,  -- what to check, when drifting
            updated_at              TIMESTAMP NOT NULL
        );
        """,
    ),
)

MIGRATIONS += (
    (
        5,
        "alerts and actions: deliveries",
        """
        -- each anomaly told to an alert target (Alertmanager, OTLP logs): the durable outbox is
        -- the anomalies table itself, minus what this table says was delivered (analytics/notify)
        CREATE TABLE alert_deliveries (
            anomaly_id    VARCHAR NOT NULL,
            workflow      VARCHAR NOT NULL,
            instance_key  VARCHAR NOT NULL,
            target        VARCHAR NOT NULL,   -- alertmanager <url> | otlp-logs <host:port>
            event         VARCHAR NOT NULL,   -- opened | resolved
            attempts      INTEGER NOT NULL,   -- requests it took
            delivered_at  TIMESTAMP NOT NULL
        );
        -- every request of a reconciliation webhook (and every dry run or cancellation)
        CREATE TABLE action_deliveries (
            anomaly_id    VARCHAR NOT NULL,
            workflow      VARCHAR NOT NULL,
            instance_key  VARCHAR NOT NULL,
            kind          VARCHAR NOT NULL,
            step          VARCHAR NOT NULL,
            url           VARCHAR NOT NULL,
            attempt       INTEGER NOT NULL,   -- 1, 2, ... (0: no request was made)
            outcome       VARCHAR NOT NULL,   -- sent | failed | rejected | gave_up | dry_run | cancelled
            final         BOOLEAN NOT NULL,   -- no further request will be made for this anomaly
            response_code INTEGER,            -- NULL: no response (connection error, timeout)
            error         VARCHAR NOT NULL,   -- what went wrong, '' when sent
            attempted_at  TIMESTAMP NOT NULL
        );
        """,
    ),
)

MIGRATIONS += (
    (
        6,
        "restart without a fold: next due time, fold fingerprint",
        """
        -- the event time at which the instance is next judged with no new span (a deadline, a
        -- grace period); NULL: nothing left to judge. A restart schedules these and folds nothing.
        -- A database created since has it from migration 1: in a lake, an ALTERed table's older
        -- inlined rows vanished under a serving reader when `lake maintain` flushed them
        -- (seen with the DuckLake extension for DuckDB 1.5.5; tests/test_lake.py)
        ALTER TABLE instances ADD COLUMN IF NOT EXISTS next_due_at TIMESTAMP;
        -- the model and fold that wrote every instance row; when it differs at start-up (an
        -- upgrade, a changed model), live instances are folded anew and it is rewritten
        CREATE TABLE _folded (
            fingerprint VARCHAR NOT NULL,
            written_at  TIMESTAMP NOT NULL
        );
        -- +1/-1 per instance entering/leaving a status, appended in the transaction that changes
        -- it; the writer sums the rows up now and then (analytics/write/store.py)
        CREATE TABLE _status_counts (
            workflow  VARCHAR NOT NULL,
            status    VARCHAR NOT NULL,
            instances BIGINT NOT NULL
        );
        INSERT INTO _status_counts SELECT workflow, status, count(*) FROM instances GROUP BY ALL;
        """
        + INSTANCE_COUNTS.format(source="_status_counts"),
    ),
)

LATEST = MIGRATIONS[-1][0]


class SchemaTooNew(RuntimeError):
    """The database was written by a newer coordstate."""


def migrate(con: Any) -> int:
    """Apply every migration the database lacks, each in its own transaction; return the version."""
    # no PRIMARY KEY: DuckLake has no constraints, and the versions are applied in order, once
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER NOT NULL, description VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    rows = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchall()
    current = int(rows[0][0]) if rows else 0
    if current > LATEST:
        raise SchemaTooNew(
            f"the database has schema version {current}, newer than this coordstate knows ({LATEST}); "
            "upgrade coordstate or use another --db"
        )
    for version, description, sql in MIGRATIONS:
        if version <= current:
            continue
        con.execute("BEGIN")
        try:
            con.execute(sql)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, now()::TIMESTAMP)",
                [version, description],
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        current = version
    return current
