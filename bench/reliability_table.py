"""Print the README's Reliability table from the JSON lines the reliability tests recorded."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(path: str) -> None:
    rows: dict[str, list[dict[str, object]]] = defaultdict(list)
    for line in Path(path).read_text().splitlines():
        item = json.loads(line)
        rows[str(item.pop("check"))].append(item)
    out = ["| check | result |", "|---|---|"]
    crash = rows.get("crash", [])
    if crash:
        acked = sum(int(r["acknowledged"]) for r in crash)  # type: ignore[call-overload]
        lost = sum(int(r["lost"]) for r in crash)  # type: ignore[call-overload]
        out.append(
            f"| SIGKILL during streaming, restart, compare with a clean replay | {len(crash)} trials, {acked:,} acknowledged spans, **{lost} lost**; tables equal the replay |"
        )
    fuzz = rows.get("fuzz", [])
    if fuzz:
        runs = sum(int(r["runs"]) for r in fuzz)  # type: ignore[call-overload]
        crashes = sum(int(r["crashes"]) for r in fuzz)  # type: ignore[call-overload]
        secs = sum(int(r["seconds"]) for r in fuzz)  # type: ignore[call-overload]
        out.append(
            f"| atheris over OTLP protobuf, OTLP JSON, model YAML ({secs} s) | {runs:,} cases, **{crashes} crashes** |"
        )
    for r in rows.get("hostile", []):
        out.append(
            f"| hostile requests to a live server (mutated, huge, 100k attributes) | answers {r['statuses']}, **{r['crashes']} crashes**, accepted data intact |"
        )
    for r in rows.get("overload", []):
        out.append(
            f"| {r['seconds']} s at 3x capacity ({r['capacity_spans_s']:,} spans/s measured, {r['offered_spans_s']:,} offered) | "
            f"answers {r['answers']}, HTTP {r['http']}; peak RSS **{r['peak_rss_mb']} MiB** (bound {r['bound_mb']} MiB); "
            f"retrying client: {r['careful_orders']} orders, **{r['lost']} lost** |"
        )
    for name in ("storage_fault_injected", "storage_fault_disk_full"):
        for r in rows.get(name, []):
            what = "injected commit failure" if name.endswith("injected") else "database on a full 12 MiB tmpfs"
            out.append(
                f"| storage fault: {what} | {r['commit_failures']} failed commits answered as retryable, **{r['lost']} lost**, recovered by itself |"
            )
    for r in rows.get("allowlist", []):
        out.append(
            f"| attribute allowlist (`user.email`, `app.payment.card_number` on every span) | {r['secrets_stored']} of {r['secrets_sent']} stored |"
        )
    for r in rows.get("retention", []):
        out.append(
            f"| retention (7d) | {r['expired']:,} expired instances deleted in chunks of {r['chunk']}; ingest meanwhile p50 {r['ingest_p50_ms']} ms, max {r['ingest_max_ms']} ms |"
        )
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
