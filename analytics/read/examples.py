"""The worked SQL questions of the README, one click away in the app's SQL page.

The README's "Worked questions" section shows the same queries; a test keeps the two equal,
and another runs every one of them against a seeded database.
"""

from __future__ import annotations

EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Which orders are paid but not shipped?",
        """\
SELECT instance_key, status, steps['payment'] AS payment, steps['shipment'] AS shipment, started_at
FROM instances
WHERE workflow = 'order'
  AND steps['payment'] = 'completed'
  AND coalesce(steps['shipment'], 'pending') <> 'completed'
ORDER BY started_at;
""",
    ),
    (
        "Which orders were inconsistent at 08:55 on 9 October?",
        """\
SELECT instance_key, status, valid_from
FROM state_at(TIMESTAMP '2025-10-09 08:55:00')
WHERE status IN ('diverged', 'stalled')
ORDER BY instance_key;
""",
    ),
    (
        "What is the p95 time to converge, per hour?",
        """\
SELECT workflow, window_start, started, convergence_rate, p50_seconds, p95_seconds
FROM convergence(INTERVAL 1 HOUR);
""",
    ),
    (
        "Which anomalies healed by themselves, and how long did they take?",
        """\
SELECT instance_key, kind, step, opened_at, resolved_at, resolved_at - opened_at AS healed_after
FROM anomalies
WHERE resolved_at IS NOT NULL
ORDER BY healed_after DESC;
""",
    ),
    (
        "Were any cards charged twice in the last day?",
        """\
SELECT instance_key, opened_at, suggested_action, [e.span_id FOR e IN evidence] AS charge_spans
FROM anomalies
WHERE kind = 'duplicate_action' AND step = 'payment'
  AND opened_at >= now() - INTERVAL 1 DAY;
""",
    ),
    (
        "Which step is the slowest, per workflow?",
        """\
WITH runs AS (
    SELECT workflow, instance_key, step,
           max(event_time) FILTER (WHERE state IN ('completed', 'failed'))
             - min(event_time) FILTER (WHERE state = 'started') AS took
    FROM transitions
    GROUP BY ALL
)
SELECT workflow, step, count(*) AS runs,
       round(avg(epoch(took)), 3) AS avg_seconds,
       round(quantile_cont(epoch(took), 0.95), 3) AS p95_seconds
FROM runs
WHERE took IS NOT NULL
GROUP BY ALL
ORDER BY p95_seconds DESC;
""",
    ),
    (
        "What needs doing right now? (open anomalies with their suggested actions)",
        """\
SELECT severity, kind, instance_key, step, suggested_action, opened_at
FROM anomalies
WHERE resolved_at IS NULL
ORDER BY severity, opened_at;
""",
    ),
    (
        "What happened to order-1042, step by step?",
        """\
SELECT event_time, step, state, service, trace_id, span_id
FROM transitions
WHERE instance_key = 'order-1042'
ORDER BY event_time, step;
""",
    ),
    (
        "How long was each order inconsistent?",
        """\
SELECT instance_key, seconds_with_open_anomaly
FROM anomaly_time
ORDER BY seconds_with_open_anomaly DESC
LIMIT 10;
""",
    ),
    (
        "How many instances are in each status?",
        """\
SELECT workflow, status, count(*) AS instances
FROM instances
GROUP BY ALL
ORDER BY ALL;
""",
    ),
    (
        "Which matched spans never found their instance?",
        """\
SELECT disposition, service, name, count(*) AS spans
FROM spans
WHERE disposition <> 'keyed'
GROUP BY ALL
ORDER BY spans DESC;
""",
    ),
)
