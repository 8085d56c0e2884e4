"""Intake: a submission from text to queued jobs, all or nothing.

Parsing and checking (``prepare``) touches neither the engine nor the store, so it runs in a worker
thread without the engine lock: a big or hostile body only costs that thread. ``accept`` then names the
jobs, has the engine queue them (or refuse what can never fit) and commits their rows; any refusal
undoes the whole submission, and its message names every refused document.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rayqueue.queue.priority import UnknownPriorityClass
from rayqueue.queue.workload import Workload
from rayqueue.quota.quantity import MAX_JOBS, Resources
from rayqueue.scheduler.engine.errors import DuplicateJob, UnknownQueue
from rayqueue.scheduler.service import store as st
from rayqueue.scheduler.service.rayjobs import check_runnable
from rayqueue.scheduler.service.state import ServiceState
from rayqueue.scheduler.service.store import JobRecord
from rayqueue.scheduler.workloads.rayjob import (
    KIND,
    RayJobRejected,
    RayJobRequest,
    load_submission_documents,
    rayjob_request,
)
from rayqueue.scheduler.workloads.serving import RAYSERVICE

#: The characters Kubernetes draws a generated name's suffix from (no vowels, so no words; no 0, 1, 3).
GENERATED_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
#: Kubernetes cuts ``generateName`` to 58 characters, so that with its 5-character suffix a name fits 63.
GENERATED_PREFIX_MAX = 58


class SubmitError(ValueError):
    """A submission refused as a whole; ``problems`` name the document and the field, ``refused`` the
    documents (``file (document n)``, or a whole file that could not be read as YAML)."""

    def __init__(self, problems: list[str], refused: list[str] | None = None) -> None:
        self.problems = problems
        self.refused = refused or []
        super().__init__("\n".join(problems))

    @property
    def summary(self) -> str:
        """One line: which documents were refused, and that none was queued (all or nothing)."""
        where = ", ".join(self.refused) if self.refused else "the input"
        return f"submission refused ({where}); none of its documents was queued: a submission is all or nothing"


@dataclass
class PreparedJob:
    """One RayJob document checked without the engine: where it came from, its request, its priority."""

    where: str
    request: RayJobRequest
    manifest: dict[str, Any]
    priority: int
    priority_class: str | None


@dataclass
class Prepared:
    """A parsed submission on its way to the engine, with every problem found so far."""

    queue: str | None
    jobs: list[PreparedJob] = field(default_factory=list)
    services: list[Any] = field(default_factory=list)  # RayServices (serving.PreparedService)
    refused: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def refuse(self, where: str, problem: str) -> None:
        if where not in self.refused:
            self.refused.append(where)
        self.problems.append(problem)

    def error(self) -> SubmitError:
        return SubmitError(self.problems, self.refused)


@dataclass
class Accepted:
    id: str
    name: str
    queue: str
    priority: int
    priority_class: str | None
    state: str
    position: int | None
    reason: str | None  # the sentence: why it waits, or where it was admitted
    reason_code: str | None = None
    unit: str | None = None
    notes: list[str] = field(default_factory=list)


#: A job accepted into the engine and the store: its workload, request, manifest (as named) and notes.
AcceptedJob = tuple[Workload, RayJobRequest, dict[str, Any], list[str]]


class Intake:
    def __init__(self, s: ServiceState) -> None:
        self.s = s
        #: takes the RayService documents of a submission (serving.Serving.prepare_into)
        self.services: Callable[[Prepared, str, dict[str, Any], str | None], None] | None = None

    def prepare(
        self,
        files: Sequence[tuple[str, str]],
        *,
        queue: str | None = None,
        priority: str | None = None,
        ignore_other_kinds: bool = False,
    ) -> Prepared:
        """Parse and check every document; touches neither the engine nor the store (any thread may run it)."""
        out = Prepared(queue=queue)
        for source, text in files:
            try:
                # Bounded (size, UTF-8, nesting, aliases), each document an object with a kind.
                docs = load_submission_documents(text, source)
            except RayJobRejected as exc:
                out.refuse(source, exc.message)
                continue
            found = False
            for index, doc in docs:
                where = f"{source} (document {index})"
                kind = doc.get("kind")
                if kind == RAYSERVICE and self.services is not None:
                    found = True
                    self.services(out, where, doc, priority)
                    continue
                if kind != KIND:
                    if ignore_other_kinds:
                        continue
                    meta = doc.get("metadata")
                    name = (meta.get("name") if isinstance(meta, dict) else None) or "<unnamed>"
                    out.refuse(where, f"{where}: kind {kind!r} ({name}) is not a RayJob; standalone mode "
                                      "queues ray.io/v1 RayJobs and RayServices only "
                                      "(remove the document, or pass --ignore-other-kinds)")
                    continue
                found = True
                try:
                    req = rayjob_request(doc)
                    check_runnable(req, f"RayJob {req.name}")
                except RayJobRejected as exc:
                    out.refuse(where, f"{where}: {exc.message}")
                    continue
                try:
                    prio, prio_class = self.s.priorities.resolve(
                        priority if priority is not None else req.priority_class)
                except UnknownPriorityClass as exc:
                    label = "--priority" if priority is not None else "label rayqueue.io/priority-class"
                    out.refuse(where, f"{where}: RayJob {req.name}: {label}: {exc}")
                    continue
                out.jobs.append(PreparedJob(where, req, doc, prio, prio_class))
            if not found and not any(r == source or r.startswith(f"{source} (") for r in out.refused):
                out.refuse(source, f"{source}: no RayJob document found")
        return out

    def accept(self, prepared: Prepared) -> list[AcceptedJob]:
        """The engine's and the store's part of a submission, all or nothing (call it holding the engine
        lock, on any thread: it touches no asyncio object)."""
        s = self.s
        queue = prepared.queue
        workloads: list[AcceptedJob] = []
        where_of: dict[str, str] = {}  # job id -> "file (document n)", for the engine's refusals
        taken: set[str] = set()  # ids given out in this submission; the store is asked about the rest
        for job in prepared.jobs:
            where, req, doc = job.where, job.request, job.manifest
            try:
                # like kubectl: no metadata.namespace means the namespace "default"
                leaf = s.engine.leaf_for(namespace=req.namespace or "default", quota=queue or req.queue)
            except KeyError as exc:
                label = "--queue" if queue else ("label rayqueue.io/queue" if req.queue else "metadata.namespace")
                leaves = ", ".join(sorted(s.engine.tree_view().leaves))
                prepared.refuse(where, f"{where}: RayJob {req.name}: {label}: {exc.args[0]} (leaves: {leaves})")
                continue
            generated: str | None = None
            if req.generate_name:
                # As the Kubernetes API server does: the job is named once, here, and the name is stored
                # in its manifest, so it stays the same across restarts and every submit gets a new one.
                generated = self._generated_name(req.name, taken)
                doc = {**doc, "metadata": {**(doc.get("metadata") or {}), "name": generated}}
                req = dataclasses.replace(req, name=generated, generate_name=False)
                taken.add(generated)
            # A generated name is unique already: it is the id too (`cpu-sample-x7k2p`).
            job_id = generated or self._new_id(req.name, taken)
            taken.add(job_id)
            w = Workload(
                uid=job_id,
                queue=leaf,
                request=dict(req.total),
                pods=req.pods,
                priority=job.priority,
                priority_class=job.priority_class,
                submitted_at=s.clock(),
                expected_duration=req.expected_duration,
                name=req.name,
                pod_request=req.largest_pod,
            )
            workloads.append((w, req, doc, list(req.notes)))
            where_of[job_id] = where
        if prepared.refused:
            raise prepared.error()
        # The engine decides what can never fit; all or nothing.
        added: list[Workload] = []
        for w, _req, _doc, _notes in workloads:
            try:
                rejected = s.engine.submit(w)
            except (UnknownQueue, DuplicateJob) as exc:
                prepared.refuse(where_of[w.uid], f"{where_of[w.uid]}: RayJob {w.name}: {exc}")
                continue
            if rejected is not None:
                prepared.refuse(
                    where_of[w.uid],
                    f"{where_of[w.uid]}: RayJob {w.name}: can never run in queue {w.queue}: {rejected.reason.message}",
                )
            else:
                added.append(w)
        if prepared.refused:
            for w in added:
                s.engine.cancel(w.uid)
            raise prepared.error()
        rows = [
            # model_construct: these fields are ours and already checked, and SQLModel's full constructor
            # cost a quarter of a millisecond a row
            JobRecord.model_construct(
                id=w.uid,
                name=w.name,
                namespace=req.namespace,
                queue=w.queue,
                priority=w.priority,
                priority_class=w.priority_class,
                state=st.PENDING,
                manifest=json.dumps(doc),
                request=json.dumps(_visible(w.request)),
                pods=w.pods,
                submitted_at=w.submitted_at,
            )
            for w, req, doc, _notes in workloads
        ]
        try:
            s.store.add_jobs(rows)
        except Exception:
            for w in added:
                s.engine.cancel(w.uid)
            raise
        for w, req, _doc, _notes in workloads:
            s.requests[w.uid] = req
            s.metrics.submitted.labels(queue=w.queue).inc()
        return workloads

    def answers(self, workloads: list[AcceptedJob], known: Mapping[str, JobRecord] | None = None) -> list[Accepted]:
        """What the submitter is told of each accepted job: its id, state, position and reason now.
        ``known``: rows as this submission's admission cycle committed them (the rest are read)."""
        s = self.s
        known = known or {}
        out = []
        for w, _req, _doc, notes in workloads:
            row = known[w.uid] if w.uid in known else s.store.get(w.uid)
            info = s.engine.explain(w.uid) if s.engine.has_job(w.uid) else None
            out.append(
                Accepted(
                    id=w.uid,
                    name=w.name,
                    queue=w.queue,
                    priority=w.priority,
                    priority_class=w.priority_class,
                    state=row.state if row else st.PENDING,
                    position=info.position if info else None,
                    reason=info.reason.message if info and info.reason else None,
                    reason_code=info.reason.code.value if info and info.reason else None,
                    unit=row.unit if row else None,
                    notes=notes,
                )
            )
        return out

    def _generated_name(self, prefix: str, taken: set[str]) -> str:
        """``metadata.generateName`` + 5 random characters, like Kubernetes: a name no job has as its
        name or id (ids of this submission included)."""
        prefix = prefix[:GENERATED_PREFIX_MAX]
        while True:
            candidate = prefix + "".join(secrets.choice(GENERATED_NAME_ALPHABET) for _ in range(5))
            if candidate not in taken and self.s.store.get(candidate) is None and not self.s.store.by_name(candidate):
                return candidate

    def _new_id(self, name: str, taken: set[str]) -> str:
        """``name`` + 6 random hex digits, unused by any job (looked up by key, not by loading every id)."""
        while True:
            candidate = f"{name}-{secrets.token_hex(3)}"
            if candidate not in taken and self.s.store.get(candidate) is None:
                return candidate


def _visible(request: Resources) -> Resources:
    return {r: v for r, v in request.items() if r != MAX_JOBS}
