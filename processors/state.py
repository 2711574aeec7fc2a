"""The live instance table: the transition set of every instance, and its folded state.

Pure and in memory. The store rebuilds it from the database at start-up; the processor feeds it
new transitions; the observer reads the folded states.

Memory stays proportional to the *active* instances. Every instance the database holds that is
not in memory — finished and quiet (*evicted*), or not loaded since a restart — is known only by
a 64-bit hash of its id (:class:`StoredIds`, 8 bytes each); its transitions come back through
``loader`` (the store reads them) the moment a transition for it arrives or its next due time
falls. :meth:`InstanceTable.prefetch` brings many back in one read. Neither changes a result: the
fold of the reloaded set is the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from processors.fold import InstanceState, fold
from processors.model import WorkflowSpec
from processors.types import Transition

InstanceId = tuple[str, str]  # (workflow, instance_key)
#: the stored transitions of these instances (an instance the database does not hold: absent)
Loader = Callable[[Sequence[InstanceId]], Mapping[InstanceId, Iterable[Transition]]]
#: evicted or read-back ids kept as ids until this many, then merged into the sorted array
MERGE_AFTER = 100_000


#: 64-bit hashes of instance ids, in order; the store hashes with DuckDB (``hash(workflow,
#: instance_key)``, the same function that hashed the stored ids at start-up)
Hasher = Callable[[Sequence[InstanceId]], np.ndarray]


def md5_hasher(instances: Sequence[InstanceId]) -> np.ndarray:
    """A hasher for a table with no database behind it."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.md5(f"{w}\x1f{k}".encode(), usedforsecurity=False).digest()[8:], "little")
            for w, k in instances
        ),
        np.uint64,
        len(instances),
    )


class StoredIds:
    """The instances the database holds that are not in memory: a sorted array of id hashes
    (8 bytes each) read at start-up, and the ids evicted and read back since. A hash can collide
    (p ≈ n²/2⁶⁵): a false "held" costs one read that finds nothing, never a wrong result."""

    def __init__(self, hashes: np.ndarray | None = None, hasher: Hasher = md5_hasher) -> None:
        self._sorted = np.sort(hashes) if hashes is not None else np.empty(0, np.uint64)
        self._hasher = hasher
        self._added: set[InstanceId] = set()  # evicted since: held, not in the array
        self._removed: set[InstanceId] = set()  # read back since: in the array, not held

    def __len__(self) -> int:
        return len(self._sorted) + len(self._added) - len(self._removed)

    def holds(self, instances: Sequence[InstanceId]) -> list[bool]:
        out = [i in self._added for i in instances]
        ask = [n for n, i in enumerate(instances) if not out[n] and i not in self._removed]
        if ask and len(self._sorted):
            for n, found in zip(ask, self._in_sorted(self._hasher([instances[n] for n in ask])), strict=True):
                out[n] = bool(found)
        return out

    def add(self, instance: InstanceId) -> None:
        """An instance that was in memory, and is now only in the database."""
        if instance in self._removed:
            self._removed.discard(instance)
        else:
            self._added.add(instance)
        self._merge_if_large()

    def remove(self, instances: Sequence[InstanceId], *, held: bool = False) -> None:
        """These are in memory now, or gone from the database; ``held``: all of them were held
        (just read back), so none needs hashing to find out."""
        known = [True] * len(instances) if held else self.holds(instances)
        for instance, held_now in zip(instances, known, strict=True):
            if instance in self._added:
                self._added.discard(instance)
            elif held_now:
                self._removed.add(instance)
        self._merge_if_large()

    def _in_sorted(self, hashes: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(self._sorted, hashes), len(self._sorted) - 1)
        return np.asarray(self._sorted[at] == hashes)

    def _merge_if_large(self) -> None:
        if len(self._added) + len(self._removed) < MERGE_AFTER:
            return
        kept = self._sorted
        if self._removed:
            gone = self._hasher(list(self._removed))
            # drop one occurrence per removed id (another id may share its hash: p ≈ 0)
            kept = np.delete(kept, np.searchsorted(kept, np.sort(gone)))
        self._sorted = np.sort(np.concatenate([kept, self._hasher(list(self._added))]))
        self._added.clear()
        self._removed.clear()


class InstanceTable:
    def __init__(
        self, workflows: Mapping[str, WorkflowSpec], loader: Loader | None = None, hasher: Hasher = md5_hasher
    ) -> None:
        self._workflows = workflows
        self._hasher = hasher
        self._transitions: dict[InstanceId, dict[tuple[str, ...], Transition]] = {}
        #: instances the database holds that are not in memory (none is in both)
        self.stored = StoredIds(hasher=hasher)
        #: asked since the last prefetch, and not in the database (new, or a hash collision)
        self._absent: set[InstanceId] = set()
        self.loader = loader

    def __contains__(self, instance: InstanceId) -> bool:
        """In memory, or held by the database (then read back now: a prefetch saves the read)."""
        return instance in self._transitions or self._load([instance]) > 0

    def __len__(self) -> int:
        """Instances in memory plus those only the database holds (approximately: hashes)."""
        return len(self._transitions) + len(self.stored)

    def __iter__(self) -> Iterator[InstanceId]:
        """The instances held in memory (the others are not folded until they come back)."""
        return iter(list(self._transitions))

    @property
    def loaded(self) -> int:
        return len(self._transitions)

    def prefetch(self, instances: Iterable[InstanceId]) -> int:
        """Bring back, in one read, every one of these the database holds and memory does not;
        return how many came back."""
        self._absent.clear()
        return self._load(set(instances))

    def add(self, transitions: Iterable[Transition]) -> tuple[list[Transition], int]:
        """Add transitions; return the ones not seen before and how many were duplicates."""
        new: list[Transition] = []
        duplicates = 0
        for tr in transitions:
            instance = (tr.workflow, tr.instance_key)
            bucket = self._transitions.get(instance)
            if bucket is None:
                self._load([instance])
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

    def restore(self, transitions: Iterable[Transition], stored: np.ndarray | None = None) -> int:
        """Start-up: these transitions in memory; ``stored``: the id hashes of the instances the
        database holds that are not among them (they come back on demand)."""
        self.stored = StoredIds(hasher=self._hasher)  # nothing to read back while restoring
        self._absent.clear()
        new, _ = self.add(transitions)
        self.stored = StoredIds(stored, self._hasher)
        return len(new)

    def state(self, instance: InstanceId, now_ns: int) -> InstanceState:
        if instance not in self._transitions:
            self._load([instance])
        workflow, key = instance
        return fold(self._workflows[workflow], key, self._transitions[instance].values(), now_ns, distinct=True)

    def evict(self, instance: InstanceId) -> None:
        """Keep only the hash of a quiet, finished instance; :meth:`add` brings it back."""
        if self.loader is not None and self._transitions.pop(instance, None) is not None:
            self.stored.add(instance)
            self._absent.discard(instance)

    def forget(self, instances: Sequence[InstanceId]) -> None:
        """Drop instances entirely (retention deleted their history)."""
        for instance in instances:
            self._transitions.pop(instance, None)
        self.stored.remove(instances)

    def _load(self, instances: Iterable[InstanceId]) -> int:
        if self.loader is None or not len(self.stored):
            return 0
        ask = [i for i in dict.fromkeys(instances) if i not in self._transitions and i not in self._absent]
        wanted: list[InstanceId] = []
        for i, held in zip(ask, self.stored.holds(ask), strict=True):
            (wanted.append if held else self._absent.add)(i)
        if not wanted:
            return 0
        found = self.loader(wanted)
        for instance in wanted:
            transitions = found.get(instance)
            if not transitions:
                self._absent.add(instance)
                continue
            bucket = self._transitions.setdefault(instance, {})
            for tr in transitions:
                seen = bucket.get(tr.evidence)
                if seen is None or tr < seen:
                    bucket[tr.evidence] = tr
        back = [i for i in wanted if i in self._transitions]
        self.stored.remove(back, held=True)
        return len(back)
