"""The live instance table: the transition set of every instance, and its folded state.

Pure and in memory. The store rebuilds it from the ``transitions`` table at start-up
(:meth:`InstanceTable.restore`); the processor feeds it new transitions; the observer reads the
folded states.

Memory stays proportional to the *active* instances: an instance that reached a coherent end and
stayed quiet can be *evicted* — only its id is kept — and is reloaded through ``loader`` (the
store reads its transitions back) the moment a late transition for it arrives. Eviction never
changes a result: the fold of the reloaded set is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from processors.fold import InstanceState, fold
from processors.model import WorkflowSpec
from processors.types import Transition

InstanceId = tuple[str, str]  # (workflow, instance_key)
Loader = Callable[[InstanceId], Iterable[Transition]]


class InstanceTable:
    def __init__(self, workflows: Mapping[str, WorkflowSpec], loader: Loader | None = None) -> None:
        self._workflows = workflows
        self._transitions: dict[InstanceId, dict[tuple[str, ...], Transition]] = {}
        self._evicted: set[InstanceId] = set()
        self.loader = loader

    def __contains__(self, instance: InstanceId) -> bool:
        return instance in self._transitions or instance in self._evicted

    def __len__(self) -> int:
        return len(self._transitions) + len(self._evicted)

    def __iter__(self) -> Iterator[InstanceId]:
        """The instances held in memory (evicted ones are not folded until they come back)."""
        return iter(list(self._transitions))

    @property
    def loaded(self) -> int:
        return len(self._transitions)

    def add(self, transitions: Iterable[Transition]) -> tuple[list[Transition], int]:
        """Add transitions; return the ones not seen before and how many were duplicates."""
        new: list[Transition] = []
        duplicates = 0
        for tr in transitions:
            instance = (tr.workflow, tr.instance_key)
            if instance in self._evicted:
                self._reload(instance)
            bucket = self._transitions.setdefault(instance, {})
            seen = bucket.get(tr.evidence)
            if seen is not None:
                duplicates += 1
                if tr < seen:  # keep the same representative the fold would pick
                    bucket[tr.evidence] = tr
                continue
            bucket[tr.evidence] = tr
            new.append(tr)
        return new, duplicates

    def restore(self, transitions: Iterable[Transition], evicted: Iterable[InstanceId] = ()) -> int:
        new, _ = self.add(transitions)
        self._evicted.update(i for i in evicted if i not in self._transitions)
        return len(new)

    def state(self, instance: InstanceId, now_ns: int) -> InstanceState:
        self._reload(instance)
        workflow, key = instance
        return fold(self._workflows[workflow], key, self._transitions[instance].values(), now_ns, distinct=True)

    def evict(self, instance: InstanceId) -> None:
        """Keep only the id of a quiet, finished instance; :meth:`add` brings it back."""
        if self.loader is not None and self._transitions.pop(instance, None) is not None:
            self._evicted.add(instance)

    def forget(self, instance: InstanceId) -> None:
        """Drop an instance entirely (retention deleted its history)."""
        self._transitions.pop(instance, None)
        self._evicted.discard(instance)

    def _reload(self, instance: InstanceId) -> None:
        if instance in self._evicted:
            self._evicted.discard(instance)
            assert self.loader is not None
            bucket = self._transitions.setdefault(instance, {})
            for tr in self.loader(instance):
                seen = bucket.get(tr.evidence)
                if seen is None or tr < seen:
                    bucket[tr.evidence] = tr
