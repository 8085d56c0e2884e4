"""A store seeded with jobs as the standalone service writes them, for the dashboard's tests and benchmark."""

from __future__ import annotations

import json
import random
from pathlib import Path

from sqlalchemy import insert

from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.store import EventRecord, JobRecord, LogSnapshotRecord, Store

GPU = "nvidia.com/gpu"
T0 = 1_764_000_000.0  # 2025-11-24: a fixed start, so that pages and figures do not depend on today

TREE_YAML = """\
apiVersion: scheduling.sigs.k8s.io/v1beta1
kind: ElasticQuotaTree
metadata: {name: seeded}
spec:
  root:
    name: root
    min: {nvidia.com/gpu: 8}
    max: {nvidia.com/gpu: 8}
    children:
      - {name: team-a, namespaces: [team-a], min: {nvidia.com/gpu: 4}, max: {nvidia.com/gpu: 8}}
      - {name: team-b, namespaces: [team-b], min: {nvidia.com/gpu: 4}, max: {nvidia.com/gpu: 8}}
"""


def seed_story(store: Store) -> None:
    """Three jobs whose lives a person would look up: one preempted then finished, its preemptor, and one
    that failed after waiting under two reasons."""
    req = json.dumps({GPU: 4000, "cpu": 600})
    rows = [
        JobRecord(id="train-a-1", name="train-a", namespace="team-a", queue="team-a", priority=100,
                  priority_class="low", state=st.SUCCEEDED, request=req, pods=3, submitted_at=T0,
                  admitted_at=T0 + 200, first_admitted_at=T0 + 5, running_at=T0 + 210, finished_at=T0 + 900,
                  attempt=1, submission_id="train-a-1-r1", unit="ecs", preemptions=1, ray_status="SUCCEEDED",
                  logs="epoch 9 done\nfinal loss 0.01\n"),
        JobRecord(id="urgent-b-1", name="urgent-b", namespace="team-b", queue="team-b", priority=1000,
                  priority_class="high", state=st.SUCCEEDED, request=req, pods=3, submitted_at=T0 + 60,
                  admitted_at=T0 + 70, first_admitted_at=T0 + 70, running_at=T0 + 75, finished_at=T0 + 190,
                  submission_id="urgent-b-1", unit="ecs", ray_status="SUCCEEDED"),
        JobRecord(id="sweep-b-1", name="sweep-b", namespace="team-b", queue="team-b", priority=500,
                  priority_class="normal", state=st.FAILED, request=req, pods=3, submitted_at=T0 + 100,
                  admitted_at=T0 + 400, first_admitted_at=T0 + 400, running_at=T0 + 405, finished_at=T0 + 500,
                  submission_id="sweep-b-1", unit="acs", ray_status="FAILED", ray_message="exit code 1"),
    ]
    ev = [
        ("train-a-1", 0, "Submitted", "queued in team-a with priority 100 (low)", None, None, None, None),
        ("train-a-1", 5, "Admitted", "admitted on unit ecs", "ecs", "Admitted", None, json.dumps({GPU: 4000})),
        ("train-a-1", 6, "Released", "submitted to Ray as train-a-1", "ecs", None, None, None),
        ("train-a-1", 8, "Running", "Ray runs train-a-1", "ecs", None, None, None),
        ("urgent-b-1", 60, "Submitted", "queued in team-b with priority 1000 (high)", None, None, None, None),
        ("train-a-1", 61, "Preempting", "team-a borrows 4 nvidia.com/gpu above its min (for urgent-b-1)", "ecs",
         "Reclaimed", "urgent-b-1", None),
        ("urgent-b-1", 61, "Waiting", "waiting for train-a-1 to stop", None, "WaitingForPreemption", None, None),
        ("train-a-1", 69, "Requeued", "Ray stopped train-a-1; back in the queue", None, None, None, None),
        ("urgent-b-1", 70, "Admitted", "admitted on unit ecs", "ecs", "Admitted", None, None),
        ("train-a-1", 70, "Waiting", "root/team-a would use 12 of max 8 nvidia.com/gpu", None, "QuotaMaxExceeded",
         None, None),
        ("urgent-b-1", 190, "Succeeded", "Ray reports SUCCEEDED", "ecs", None, None, None),
        ("train-a-1", 200, "Admitted", "admitted on unit ecs", "ecs", "Admitted", None, None),
        ("train-a-1", 900, "Succeeded", "Ray reports SUCCEEDED", "ecs", None, None, None),
        ("sweep-b-1", 100, "Submitted", "queued in team-b with priority 500 (normal)", None, None, None, None),
        ("sweep-b-1", 101, "Waiting", "root/team-b would use 12 of max 8 nvidia.com/gpu", None, "QuotaMaxExceeded",
         None, None),
        ("sweep-b-1", 250, "Waiting", "no unit has room: ecs has 0 of 8 nvidia.com/gpu free", None,
         "NoCapacityInUnits", None, None),
        ("sweep-b-1", 400, "Admitted", "admitted on unit acs", "acs", "Admitted", None, json.dumps({GPU: 4000})),
        ("sweep-b-1", 500, "Failed", "exit code 1", "acs", None, None, None),
    ]
    with store.session() as s:
        s.add_all(rows)
        for job_id, dt, kind, message, unit, code, by, borrowed in ev:
            s.add(EventRecord(job_id=job_id, at=T0 + dt, kind=kind, message=message, unit=unit, reason_code=code,
                              by_job=by, borrowed=borrowed))
        s.add(LogSnapshotRecord(job_id="train-a-1", attempt=0, at=T0 + 69, kind="Preempted",
                                text="epoch 1 done\nstopping: SIGTERM\n"))
        s.add(LogSnapshotRecord(job_id="train-a-1", attempt=1, at=T0 + 900, kind=st.SUCCEEDED,
                                text="epoch 9 done\nfinal loss 0.01\n"))
        s.commit()
    store.set_setting("quota_tree_yaml", TREE_YAML)


def seed_bulk(store: Store, count: int, teams: int = 20, seed: int = 7, batch: int = 10_000) -> None:
    """``count`` finished jobs over ``teams`` teams and 30 days, each with its events (a tenth preempted once)."""
    rng = random.Random(seed)
    outcomes = (st.SUCCEEDED,) * 8 + (st.FAILED, st.CANCELLED)
    req = json.dumps({GPU: 1000, "cpu": 600})
    with store.engine.begin() as conn:
        for start in range(0, count, batch):
            jobs, events = [], []
            for i in range(start, min(count, start + batch)):
                sub = T0 + rng.uniform(0, 30 * 86400)
                wait = rng.expovariate(1 / 300)
                ran = rng.expovariate(1 / 3600)
                jid = f"job-{i:06d}"
                team = f"team-{i % teams:02d}"
                preempted = i % 10 == 0
                jobs.append(dict(id=jid, name=f"job-{i:06d}", namespace=team, queue=team, priority=500,
                                 priority_class="normal", state=rng.choice(outcomes), request=req, pods=3,
                                 manifest="{}", submitted_at=sub, admitted_at=sub + wait, first_admitted_at=sub + wait,
                                 running_at=sub + wait + 2, finished_at=sub + wait + ran, attempt=int(preempted),
                                 released=True, preemptions=int(preempted), unit="ecs"))
                events.append(dict(job_id=jid, at=sub, kind="Submitted", message="queued", state="Pending"))
                events.append(dict(job_id=jid, at=sub + wait, kind="Admitted", message="admitted on unit ecs",
                                   state="Admitted", unit="ecs"))
                if preempted:
                    events.append(dict(job_id=jid, at=sub + wait + ran / 2, kind="Preempting", message="reclaimed",
                                       state="Preempting", reason_code="Reclaimed", by_job="job-000001"))
                events.append(dict(job_id=jid, at=sub + wait + ran, kind="Succeeded", message="done",
                                   state="Succeeded"))
            conn.execute(insert(JobRecord.__table__), jobs)  # type: ignore[attr-defined]
            conn.execute(insert(EventRecord.__table__), events)  # type: ignore[attr-defined]


def seeded_store(path: Path) -> str:
    url = f"sqlite:///{path}"
    store = Store(url)
    seed_story(store)
    store.close()
    return url
