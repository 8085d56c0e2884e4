"""A queue's pending order (``queue.queues.SortedKeys``) against a plain sorted list (hypothesis)."""

from __future__ import annotations

from bisect import insort

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayqueue.queue import queues
from rayqueue.queue.queues import SortedKeys

# Keys shaped as a queue's: (-priority, submitted, name, seq); seq keeps them distinct.
KEYS = st.tuples(st.integers(-3, 3), st.floats(0, 5, allow_nan=False), st.sampled_from(["a", "b", "c"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), KEYS), max_size=300), st.randoms(use_true_random=False))
def test_positions_and_order_match_a_sorted_list(ops: list[tuple[bool, tuple[int, float, str]]], rnd) -> None:
    keys = SortedKeys()
    model: list[tuple[int, float, str, int]] = []
    for seq, (add, fields) in enumerate(ops):
        if add or not model:
            key = (*fields, seq)
            keys.add(key)
            insort(model, key)
        else:
            key = model.pop(rnd.randrange(len(model)))
            keys.remove(key)
        assert len(keys) == len(model)
        assert list(keys) == model
        if model:
            assert keys.first() == model[0]
            probe = model[rnd.randrange(len(model))]
            assert keys.index(probe) == model.index(probe)


def test_a_long_queue_splits_into_chunks_and_keeps_its_order() -> None:
    """Past a chunk's limit the keys spread over chunks; positions still count every key before."""
    n = 5 * 2 * queues.CHUNK + 7
    keys = SortedKeys()
    for i in reversed(range(n)):  # newest first: every add lands at the front
        keys.add((0, float(i), "j", i))
    assert len(keys.chunks) > 2
    assert [k[3] for k in keys] == list(range(n))
    assert keys.index((0, float(n - 1), "j", n - 1)) == n - 1
    for i in range(0, n, 2):
        keys.remove((0, float(i), "j", i))
    assert [k[3] for k in keys] == list(range(1, n, 2))
    assert keys.index((0, 1.0, "j", 1)) == 0
    with pytest.raises(ValueError, match="not in the queue"):
        keys.remove((0, 0.0, "j", 0))
