"""Kubernetes Events as an event series: the same event again bumps ``count`` on one Event."""

from __future__ import annotations

import pytest
from operator_env import environment, eventually

from rayqueue.scheduler.operator.kube import EventPoster, KubeClient

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
