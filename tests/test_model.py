"""The model loader and `coordstate check`: every invalid case names its path and its fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from collector.cli import main
from processors.model import ModelError, parse_duration, parse_model
from tests.helpers import ORDERS_MODEL, OTEL_DEMO_MODEL

VALID = """
file_format: "1"
workflows:
  - name: order
    key: {attributes: [app.order.id]}
    steps:
      - name: checkout
        match: {service: checkout, span: PlaceOrder}
      - name: payment
        match: {service: payment, span: Charge}
        requires: [checkout.started]
        compensated_by: refund
      - name: shipment
        match: {service: shipping, span: ShipOrder}
        requires: [payment.completed]
      - name: refund
        match: {service: payment, span: Refund}
        optional: true
"""


def run_check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "model.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SystemExit) as exc:
        main(["check", str(path)])
    captured = capsys.readouterr()
    code = exc.value.code
    assert isinstance(code, int)
    return code, (captured.out + captured.err).replace(str(path) + ": ", "")


def test_shipped_models_pass_check(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", str(ORDERS_MODEL), str(OTEL_DEMO_MODEL)])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "workflow order: key app.order.id → demo.order.id" in out
    assert "shipment: shipping / span 'ShipOrder' [requires payment.completed, inventory.completed]" in out
    assert "workflow astronomy-shop-order" in out
    assert "attributes read: app.order.id, demo.order.id" in out


def test_valid_model_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(tmp_path, VALID, capsys)
    assert code == 0
    assert "ok — 1 workflow(s)" in out
    assert "checkout: checkout / span 'PlaceOrder' [start]" in out


INVALID = [
    pytest.param(
        VALID.replace("requires: [payment.completed]", "requires: [shipping.completed]"),
        "workflows[0].steps[2].requires[0]: unknown step 'shipping' "
        "(known: checkout, payment, shipment, refund); did you mean 'shipment'?",
        id="typo-in-requires",
    ),
    pytest.param(
        VALID.replace("requires: [payment.completed]", "requires: [payment.done]"),
        "workflows[0].steps[2].requires[0]: unknown state 'done' in 'payment.done' "
        "(states: started, completed, failed, compensated)",
        id="unknown-state",
    ),
    pytest.param(
        VALID.replace("compensated_by: refund", "compensated_by: refnd"),
        "workflows[0].steps[1].compensated_by: unknown step 'refnd' (known: checkout, payment, shipment, refund)",
        id="unknown-compensation",
    ),
    pytest.param(
        VALID.replace("requires: [checkout.started]", "requires: [shipment.completed]"),
        "workflows[0].steps[1].requires: cycle in requires: payment → shipment → payment; "
        "remove one of these requirements",
        id="cycle",
    ),
    pytest.param(
        VALID.replace("- name: refund", "- name: payment"),
        "workflows[0].steps[3].name: duplicate step 'payment' (already defined at steps[1]); rename one of them",
        id="duplicate-step",
    ),
    pytest.param(
        VALID.replace("key: {attributes: [app.order.id]}", "key: {inherit: [trace]}"),
        "workflows[0].key: no key rule: list the business-key attributes in key.attributes, "
        "or set key.trace_id: true to make every trace an instance",
        id="no-key-rule",
    ),
    pytest.param(
        VALID.replace("    key: {attributes: [app.order.id]}\n", ""),
        "workflows[0].key: missing: this key is required",
        id="no-key-at-all",
    ),
    pytest.param(
        VALID.replace("name: order\n", "name: order\n    deadline: 30 seconds\n"),
        "workflows[0].deadline: bad duration '30 seconds': write a number and a unit, e.g. 500ms, 10s, 5m, 1h, 7d",
        id="bad-duration",
    ),
    pytest.param(
        VALID.replace('file_format: "1"', 'file_format: "2"'),
        "file_format: unsupported format '2': this coordstate reads '1'; "
        "upgrade coordstate or write the model in a supported format",
        id="newer-format",
    ),
    pytest.param(
        VALID.replace("match: {service: checkout,", "match: {srvice: checkout,"),
        "workflows[0].steps[0].match: unknown key 'srvice' (did you mean 'service'?); "
        "allowed keys: service, span, event, state, attributes",
        id="unknown-key",
    ),
    pytest.param(
        VALID + "    conflicts:\n      - [shipment.completed, payment]\n",
        "workflows[0].conflicts[0][1]: write 'payment' as 'step.state', e.g. 'payment.completed'",
        id="conflict-without-state",
    ),
    pytest.param(
        VALID + "    actions:\n      stalled: 'page {owner} about {key}'\n",
        "workflows[0].actions.stalled: unknown placeholder {owner}; use detail, evidence, key, step, workflow",
        id="bad-action-template",
    ),
    pytest.param(
        VALID.replace("match: {service: checkout, span: PlaceOrder}", "match: {service: checkout}"),
        "workflows[0].steps[0].match: a match needs 'span' (a span name) or 'event' (a span event name)",
        id="match-without-span-or-event",
    ),
    pytest.param(
        "file_format: '1'\nworkflows: [\n",
        "line 3, column 1: not valid YAML: expected the node content, but found '<stream end>'",
        id="bad-yaml",
    ),
    pytest.param(  # found by atheris: PyYAML recurses once per level (RecursionError before)
        "file_format: '1'\nworkflows: " + "{a: " * 2_000 + "\n",
        "not valid YAML for a model: nested too deeply to parse (a model is a few levels deep); "
        "look for unbalanced brackets or runaway indentation",
        id="nested-too-deeply",
    ),
    pytest.param(
        "file_format: '1'\nworkflows:\n" + "".join("  " * i + "a:\n" for i in range(1, 600)),
        "not valid YAML for a model: nested too deeply to parse (a model is a few levels deep); "
        "look for unbalanced brackets or runaway indentation",
        id="indented-too-deeply",
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_model_is_reported_with_path_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    code, out = run_check(tmp_path, text, capsys)
    assert code == 2
    assert message in out.splitlines(), out
    assert "Traceback" not in out


def test_every_problem_is_reported_at_once() -> None:
    text = textwrap.dedent(VALID).replace("compensated_by: refund", "compensated_by: refnd")
    text = text.replace("requires: [payment.completed]", "requires: [shipping.completed]")
    with pytest.raises(ModelError) as exc:
        parse_model(text, "m.yaml")
    paths = [p.path for p in exc.value.problems]
    assert paths == ["workflows[0].steps[1].compensated_by", "workflows[0].steps[2].requires[0]"]


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", str(tmp_path / "nope.yaml")])
    assert exc.value.code == 2
    assert "cannot read the file: No such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("500ms", 500_000_000),
        ("10s", 10_000_000_000),
        ("5m", 300_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("7d", 604_800_000_000_000),
    ],
)
def test_durations(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


def test_model_objects_are_frozen() -> None:
    model = parse_model(VALID)
    with pytest.raises(ValueError, match="frozen"):
        model.workflows[0].steps[0].name = "other"  # type: ignore[misc]
    assert model.workflows[0].start_steps == ("checkout",)
    assert model.workflows[0].required_steps == ("checkout", "payment", "shipment")
