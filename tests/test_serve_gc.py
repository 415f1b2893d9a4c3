"""A serving process tunes the cyclic collector once its app is built: startup objects frozen,
young collections rarer; cycles are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from nacre.server.serve_setup import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_tune_gc_freezes_and_raises_thresholds(restore_gc: None) -> None:
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0
    assert GC_THRESHOLDS[0] > 700  # CPython's default


def test_cycles_are_still_collected(restore_gc: None) -> None:
    tune_gc()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    del a, b
    # Allocations alone (of containers that stay alive) trigger a young collection.
    keep: list[list[int]] = [[] for _ in range(GC_THRESHOLDS[0] * 2)]
    assert ref() is None
    assert len(keep) == GC_THRESHOLDS[0] * 2
