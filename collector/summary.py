"""Human-readable summary of a validated model (``coordstate check``)."""

from __future__ import annotations

from processors.matching import CompiledModel
from processors.model import ModelFile, format_duration, matchers


def summarize(source: str, model: ModelFile) -> str:
    compiled = CompiledModel(model)
    lines = [f"{source}: ok — {len(model.workflows)} workflow(s)"]
    for wf in model.workflows:
        key = "trace id" if wf.key.trace_id else " → ".join(wf.key.attributes)
        lines.append(
            f"  workflow {wf.name}: key {key} (inherit: {', '.join(wf.key.inherit) or 'none'}; "
            f"fallback: {wf.key.fallback or 'none'}; wait {format_duration(wf.key.wait)}), "
            f"deadline {format_duration(wf.deadline)}, grace {format_duration(wf.grace)}"
        )
        for step in wf.steps:
            what = " or ".join(
                f"{m.service or '*'} / "
                + (f"span {m.span!r}" if m.span is not None else f"event {m.event!r}")
                + (f" → {m.state.value}" if m.state else "")
                for m in matchers(step)
            )
            flags = []
            if step.name in wf.start_steps:
                flags.append("start")
            if step.optional:
                flags.append("optional")
            if step.requires:
                flags.append("requires " + ", ".join(step.requires))
            if step.compensated_by:
                flags.append(f"compensated by {step.compensated_by}")
            extra = f" [{'; '.join(flags)}]" if flags else ""
            lines.append(f"    - {step.name}: {what}{extra}")
        for a, b in wf.conflicts:
            lines.append(f"    conflict: {a} with {b}")
    lines.append(f"  attributes read: {', '.join(sorted(compiled.projection)) or 'none'}")
    return "\n".join(lines)
