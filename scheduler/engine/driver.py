"""Drive an engine forward in virtual time exactly as a live front end drives it in real time.

The simulator and the forecast (``rayqueue explain``'s expected start) both run the engine forward
through this one loop, so they cannot drift from each other nor from the live front ends:

- every instant at which something happens gets admission cycles: a job's arrival, a job's finish
  (``admitted_at + duration``), and whatever :meth:`Engine.next_wakeup` asks for, which is asked again
  after every cycle and *may be the current instant*: a cycle that has not finished handing out the
  room freed before it wants another one at once, and the service and the operator run it at once;
- the events that share an instant reach the engine before its cycle there (the finishes, then the
  arrivals; the caller feeds them);
- a ``Preempt`` is confirmed at once (``engine.suspended``: a simulated suspension takes no time), and
  that confirmation is an event like any other: it gets a cycle at the same instant;
- an ``Admit`` starts the job's run, which finishes ``expected_duration`` later unless it is preempted
  first (in the simulator that is the trace's duration; a job without one never finishes).

What the caller records (its report, the forecast's starts) it does in ``on_decision``, which sees each
decision before the driver acts on it (a ``Preempt``'s workload still names its unit then).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from rayqueue.queue.workload import Workload
from rayqueue.scheduler.engine.decisions import Admit, Decision, Preempt
from rayqueue.scheduler.engine.facade import Engine

_NONE: list[str] = []  # returned, never changed: most instants finish nothing

#: Safety net: admission cycles at one instant (each preemption round, each hand-out round needs one).
MAX_CYCLES_PER_INSTANT = 10_000


class SimulationError(RuntimeError):
    """The engine kept asking for cycles at one instant: a bug in the engine, never a user error."""


class VirtualClock:
    """The engine's clock in virtual time: whatever instant the driver is at."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Driver:
    """The event loop of a front end in virtual time, around one engine.

    A caller loops::

        while (now := driver.next_instant(next_arrival)) is not None:
            driver.advance(now)
            for uid in driver.due_finishes(now): engine.finish(uid) (and records it)
            for each arrival due now: engine.submit(...)
            driver.settle(now, on_decision)
    """

    def __init__(self, engine: Engine, clock: VirtualClock) -> None:
        self.engine = engine
        self.clock = clock
        # (finish time, arrival order, uid, run number): finishes that share an instant reach the engine in
        # the order the jobs arrived; a run preempted before its finish leaves a stale entry behind.
        self._finishes: list[tuple[float, int, str, int]] = []
        self._run: dict[str, int] = {}
        self.cycles = 0
        # The engine's wake-up as the last cycle left it: valid until the next ``advance`` (the loop feeds
        # the engine nothing between a settle and the next ``next_instant``), so it is asked once an instant.
        self._wake: float | None = None
        self._wake_known = False

    # ------------------------------------------------------------------ runs

    def running(self, w: Workload, until: float | None) -> None:
        """``w`` runs (a new run) until ``until``; None: it never finishes."""
        run = self._run.get(w.uid, 0) + 1
        self._run[w.uid] = run
        if until is not None:
            heapq.heappush(self._finishes, (until, w.seq, w.uid, run))

    def stopped(self, uid: str) -> None:
        """The current run of ``uid`` ended early (preempted): its finish is void."""
        self._run[uid] = self._run.get(uid, 0) + 1

    def next_finish(self) -> float | None:
        heap = self._finishes
        while heap:
            at, _, uid, run = heap[0]
            if self._run.get(uid) == run:
                return at
            heapq.heappop(heap)
        return None

    def due_finishes(self, now: float) -> list[str]:
        """The jobs whose current run ends at or before ``now``, in finish order."""
        heap = self._finishes
        if not heap or heap[0][0] > now:
            return _NONE
        runs = self._run
        due = []
        while heap and heap[0][0] <= now:
            _, _, uid, run = heapq.heappop(heap)
            if runs.get(uid) == run:
                runs[uid] = run + 1  # finished: nothing of this run is pending any more
                due.append(uid)
        return due

    # ------------------------------------------------------------------ time

    def next_instant(self, arrival: float | None = None) -> float | None:
        """The next instant anything happens: the earliest of ``arrival`` (the caller's next one), the
        next finish and the engine's own wake-up; None when nothing will happen any more. Never earlier
        than the current instant (the engine may ask for the current one again)."""
        best = self.next_finish()
        wake = self._wake if self._wake_known else self.engine.next_wakeup()
        if wake is not None and (best is None or wake < best):
            best = wake
        if arrival is not None and (best is None or arrival < best):
            best = arrival
        if best is None:
            return None
        now = self.clock.now
        return best if best > now else now

    def advance(self, now: float) -> None:
        self.clock.now = now
        self._wake_known = False

    # ------------------------------------------------------------------ cycles

    def settle(self, now: float, on_decision: Callable[[Decision, float], None]) -> int:
        """Admission cycles at ``now`` until the engine asks for none at this instant; the cycles run."""
        engine, runs, finishes = self.engine, self._run, self._finishes
        for n in range(1, MAX_CYCLES_PER_INSTANT + 1):
            self.cycles += 1
            confirmed = False
            for d in engine.schedule(now):
                on_decision(d, now)
                if type(d) is Admit:
                    w = d.workload  # ``running`` inlined: this runs once per admission
                    run = runs.get(w.uid, 0) + 1
                    runs[w.uid] = run
                    if w.expected_duration is not None:
                        heapq.heappush(finishes, (now + w.expected_duration, w.seq, w.uid, run))
                elif type(d) is Preempt:
                    uid = d.workload.uid
                    self.stopped(uid)
                    engine.suspended(uid, now)  # a simulated suspension is instant
                    confirmed = True
            if confirmed:
                continue  # a confirmed suspension is an event: it gets its cycle
            wake = engine.next_wakeup()
            if wake is None or wake > now:
                self._wake, self._wake_known = wake, True
                return n
        raise SimulationError(f"more than {MAX_CYCLES_PER_INSTANT} admission cycles at t={now}")
