"""The operator's own RayJob watch: it resumes from the last resourceVersion, relists on 410 Gone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from operator_env import TREES, environment, eventually, rayjob, tree_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a hang guard; waits end at their event


async def test_a_dropped_watch_resumes_from_the_last_version_and_replays_nothing() -> None:
    async with environment(runtime=0.3) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        op = await env.start_operator()
        ctl = op.controller
        delivered: Counter[tuple[str, str, str]] = Counter()
        handle = ctl.on_rayjob

        async def counting(kind: str, body: Mapping[str, Any]) -> None:
            meta = body["metadata"]
            delivered[(kind, meta["name"], str(meta["resourceVersion"]))] += 1
            await handle(kind, body)

        ctl.on_rayjob = counting  # type: ignore[method-assign]
        names = [f"j{i}" for i in range(6)]
        for i, name in enumerate(names):
            await env.create_job(rayjob(name, "team-a"))
            if i % 2 == 1:
                restarts = ctl.watch.restarts
                env.server.drop_watches()  # mid-stream: jobs are being admitted and finishing
                await eventually(lambda restarts=restarts: ctl.watch.restarts > restarts, what="watch reopened")
        await eventually(lambda: all(env.phase("team-a", n) == "Complete" for n in names), what="all complete")
        assert ctl.watch.lists == 1  # resumed every time, never listed again
        assert ctl.watch.restarts >= 3
        assert all(env.unsuspend_count("team-a", n) == 1 for n in names)
        # every version of a job was handed to the controller once: a reconnect replayed nothing
        assert delivered and max(delivered.values()) == 1, [k for k, v in delivered.items() if v > 1]
        assert {name for _, name, _ in delivered} == set(names)


async def test_410_gone_lists_again_and_loses_no_job() -> None:
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        op = await env.start_operator()
        ctl = op.controller
        await env.create_job(rayjob("a", "team-a"))  # takes the whole queue (2 CPU) for 30 s
        await eventually(lambda: env.running("team-a", "a"), what="a admitted")
        a_uid = env.job("team-a", "a")["metadata"]["uid"]
        # The watch goes away and cannot come back while a is deleted and b created ...
        blocked = env.server.inject("GET", "rayjobs", status=500, times=10**6, watch=True)
        env.server.drop_watches()
        await eventually(lambda: blocked.hits >= 1, what="the watch tried to reopen")
        await env.api.delete("ray.io/v1/rayjobs", "team-a", "a")
        await env.create_job(rayjob("b", "team-a"))
        # ... and the version it would resume from is compacted away: the server answers 410 Gone.
        env.server.compact()
        blocked.times = blocked.hits  # the watch may reopen now
        await eventually(lambda: ctl.watch.lists >= 2, what="listed again after 410 Gone")
        # the list showed a gone (its quota released) and b new: b is admitted, exactly once
        await eventually(lambda: env.running("team-a", "b"), what="b admitted")
        assert env.unsuspend_count("team-a", "b") == 1
        assert ctl.engine is not None and not ctl.engine.has_job(a_uid)
