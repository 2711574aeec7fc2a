"""The shipped collector configs are consistent: every referenced component is defined, the
coordstate exporter points at coordstate's port with a queue and retries, and models check out."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from analytics.common.telemetry import Telemetry
from analytics.read.api import prometheus
from collector.service import read_model
from tests.helpers import ROOT

CONFIGS = ROOT / "otel-config"


def load(name: str) -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((CONFIGS / name).read_text())


def test_collector_config_fans_out_to_backend_and_coordstate() -> None:
    cfg = load("collector.yaml")
    traces = cfg["service"]["pipelines"]["traces"]
    assert traces["exporters"] == ["otlp/backend", "otlp/coordstate"]
    for kind in ("receivers", "processors", "exporters"):
        for name in traces.get(kind, []):
            assert name in cfg[kind], f"{kind} {name} is used but not defined"
    assert set(cfg["service"]["extensions"]) <= set(cfg["extensions"])
    exporter = cfg["exporters"]["otlp/coordstate"]
    assert exporter["endpoint"].endswith(":4327")
    assert exporter["sending_queue"]["enabled"] is True
    assert exporter["retry_on_failure"]["enabled"] is True
    assert traces["processors"][0] == "memory_limiter"


def test_otel_demo_extras_keep_the_demos_own_exporters() -> None:
    cfg = load("otel-demo-extras.yaml")
    exporters = cfg["service"]["pipelines"]["traces"]["exporters"]
    assert exporters[-1] == "otlp/coordstate"
    assert {"otlp", "debug", "spanmetrics"} <= set(exporters)
    assert cfg["exporters"]["otlp/coordstate"]["endpoint"] == "host.docker.internal:4327"


def test_otel_demo_3x_extras_keep_the_3x_exporters() -> None:
    cfg = load("otel-demo-extras-3x.yaml")
    exporters = cfg["service"]["pipelines"]["traces"]["exporters"]
    assert exporters == ["debug", "otlp_grpc/jaeger", "span_metrics", "otlp_grpc/coordstate"]
    exporter = cfg["exporters"]["otlp_grpc/coordstate"]
    assert exporter["endpoint"] == "host.docker.internal:4327"
    assert exporter["sending_queue"]["enabled"] is True


def test_load_balancing_sketch_routes_by_trace() -> None:
    cfg = load("load-balancing.yaml")
    lb = cfg["exporters"]["load_balancing"]
    assert lb["routing_key"] == "traceID"
    assert all(h.endswith(":4327") for h in lb["resolver"]["static"]["hostnames"])


@pytest.mark.parametrize("path", sorted((CONFIGS / "models").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_models_load(path: Path) -> None:
    assert read_model(path)[0].workflows


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"), reason="promtool is not installed (make test installs it)"
)


@needs_promtool
def test_the_prometheus_rules_pass_promtool_check() -> None:
    done = subprocess.run([str(PROMTOOL), "check", "rules", str(CONFIGS / "prometheus-rules.yaml")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


@needs_promtool
def test_the_prometheus_rules_fire_as_their_unit_tests_say() -> None:
    done = subprocess.run([str(PROMTOOL), "test", "rules", "prometheus-rules.test.yaml"],
                          capture_output=True, text=True, cwd=CONFIGS, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_prometheus_rules_read_only_metrics_coordstate_serves() -> None:
    served = {
        line.split()[2] for line in prometheus(Telemetry().snapshot(), {}).splitlines() if line.startswith("# TYPE")
    }
    used = set(re.findall(r"\b(coordstate_\w+)", (CONFIGS / "prometheus-rules.yaml").read_text()))
    assert used, "the rules read no coordstate metric"
    assert used <= served, f"not served by /metrics: {sorted(used - served)}"
