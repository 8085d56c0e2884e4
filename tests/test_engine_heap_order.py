"""The engine's heap entries (``state.Turn``, ``wakeup.Entry``) order exactly as the tuples of their
fields do: they replaced those tuples for speed, and a different order would admit or wake other jobs."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from rayqueue.queue.workload import Workload
from rayqueue.scheduler.engine.state import Turn
from rayqueue.scheduler.engine.wakeup import Entry

OUTSIDE = st.integers(0, 1)
NEGPRIO = st.one_of(st.sampled_from([0, -100, -1000, 5]), st.integers(-(2**70), 2**70))
FLOATS = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 2.5]), st.floats(allow_nan=False))
NAMES = st.sampled_from(["a", "b", "job-1", "job-10"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(OUTSIDE, NEGPRIO, FLOATS, FLOATS), min_size=1, max_size=60))
def test_turns_pop_in_the_order_of_their_fields(fields: list[tuple[int, int, float, float]]) -> None:
    turns = [Turn(o, p, share, t, seq, 0, f"q{seq}") for seq, (o, p, share, t) in enumerate(fields)]
    heap: list[Turn] = []
    for turn in turns:
        heapq.heappush(heap, turn)
    popped = [heapq.heappop(heap).seq for _ in turns]
    assert popped == [seq for *_, seq in sorted((o, p, share, t, seq) for seq, (o, p, share, t) in enumerate(fields))]
    for seq, (o, p, share, t) in enumerate(fields):
        assert turns[seq].same_order(o, p, share, t, seq)
        assert not turns[seq].same_order(o, p, share, t, seq + 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(OUTSIDE, NEGPRIO, FLOATS, NAMES), min_size=1, max_size=60))
def test_wake_entries_pop_in_the_order_of_their_fields(fields: list[tuple[int, int, float, str]]) -> None:
    job = Workload(uid="j", queue="q", request={})
    heap: list[Entry] = []
    for seq, (o, p, t, name) in enumerate(fields):
        heapq.heappush(heap, Entry((o, p, t, name, seq), seq, job))
    popped = [heapq.heappop(heap).token for _ in fields]
    expected = sorted((o, p, t, name, seq) for seq, (o, p, t, name) in enumerate(fields))
    assert popped == [key[-1] for key in expected]
