"""Kubernetes Events as an event series: the same event again bumps ``count`` on one Event."""

from __future__ import annotations

import pytest
from operator_env import environment, eventually

from rayqueue.scheduler.operator.controller import Controller, OperatorConfig
from rayqueue.scheduler.operator.events import EventPoster
from rayqueue.scheduler.operator.kube import Connection, KubeClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a hang guard; waits end at their event


async def test_the_same_event_again_is_one_event_with_a_count() -> None:
    async with environment() as env, KubeClient(env.connection()) as client:
        poster = EventPoster(client)
        poster.start()
        try:
            job = {"apiVersion": "ray.io/v1", "kind": "RayJob",
                   "metadata": {"name": "j", "namespace": "team-a", "uid": "u-1"}}
            for n in range(1, 4):
                poster.post(job, "RayJob", "Queued", "queued in team-a: quota max")
                await eventually(lambda n=n: poster.posted + poster.repeated == n, what=f"event {n} written")
            [series] = env.events("j", "Queued")
            assert series["count"] == 3
            assert series["lastTimestamp"] >= series["firstTimestamp"]
            # another message is another event
            poster.post(job, "RayJob", "Queued", "queued in team-a: no capacity in units")
            await eventually(lambda: len(env.events("j", "Queued")) == 2, what="a second Event")
            assert poster.posted == 2 and poster.repeated == 2
        finally:
            await poster.stop()


async def test_a_waiting_jobs_condition_is_rewritten_at_most_once_per_interval() -> None:
    ctl = Controller(KubeClient(Connection(server="http://unused")), OperatorConfig(condition_interval_s=3600))
    state, release = ctl.state, ctl.release
    state.write_condition("u-1", "Queued", "QuotaMaxExceeded", "quota max", 3)
    assert set(release._due_writes()) == {"u-1"}  # the first is written at once
    # the reason keeps changing: nothing more is written within the interval, the latest waits
    state.write_condition("u-1", "Queued", "Backoff", "backing off", 3)
    state.write_condition("u-1", "Queued", "WaitingForReclaim", "waiting for reclaim", 2)
    state.write_condition("u-2", "Queued", "QuotaMaxExceeded", "quota max", 4)
    assert set(release._due_writes()) == {"u-2"}  # another job is not held back
    assert state.pending_writes == {"u-1": ("Queued", "WaitingForReclaim", "waiting for reclaim", 2)}
    state.condition_written["u-1"] -= 3600  # the interval has passed
    assert release._due_writes() == {"u-1": ("Queued", "WaitingForReclaim", "waiting for reclaim", 2)}
    assert state.pending_writes == {}
