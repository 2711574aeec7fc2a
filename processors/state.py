"""The live instance table: the transition set of every instance, and its folded state.

Pure and in memory. The store rebuilds it from the ``transitions`` table at start-up
(:meth:`InstanceTable.restore`); the processor feeds it new transitions; the observer reads the
folded states.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from processors.fold import InstanceState, fold
from processors.model import WorkflowSpec
from processors.types import Transition

InstanceId = tuple[str, str]  # (workflow, instance_key)


class InstanceTable:
    def __init__(self, workflows: Mapping[str, WorkflowSpec]) -> None:
        self._workflows = workflows
        self._transitions: dict[InstanceId, dict[tuple[str, ...], Transition]] = {}

    def __contains__(self, instance: InstanceId) -> bool:
        return instance in self._transitions

    def __len__(self) -> int:
        return len(self._transitions)

    def __iter__(self) -> Iterator[InstanceId]:
        return iter(list(self._transitions))

    def add(self, transitions: Iterable[Transition]) -> tuple[list[Transition], int]:
        """Add transitions; return the ones not seen before and how many were duplicates."""
        new: list[Transition] = []
        duplicates = 0
        for tr in transitions:
            bucket = self._transitions.setdefault((tr.workflow, tr.instance_key), {})
            seen = bucket.get(tr.evidence)
            if seen is not None:
                duplicates += 1
                if tr < seen:  # keep the same representative the fold would pick
                    bucket[tr.evidence] = tr
                continue
            bucket[tr.evidence] = tr
            new.append(tr)
        return new, duplicates

    def restore(self, transitions: Iterable[Transition]) -> int:
        new, _ = self.add(transitions)
        return len(new)

    def transitions(self, instance: InstanceId) -> list[Transition]:
        return list(self._transitions.get(instance, {}).values())

    def state(self, instance: InstanceId, now_ns: int) -> InstanceState:
        workflow, key = instance
        return fold(self._workflows[workflow], key, self._transitions[instance].values(), now_ns)

    def forget(self, instance: InstanceId) -> None:
        """Drop an instance from memory (retention); its history stays in the database."""
        self._transitions.pop(instance, None)
