"""The service's durable state lives in :mod:`rayqueue.scheduler.history.store`, below the front ends, because
the operator writes the same history; this name stays for the service's modules and its users."""

from rayqueue.scheduler.history.store import (
    ACTIVE_STATES,
    ADD_EVENT,
    ADD_JOB,
    ADMITTED,
    CANCELLED,
    EVENTS,
    FAILED,
    FINAL_STATES,
    GET_JOB,
    HISTORY_COLUMNS,
    JOBS,
    LIVE_STATES,
    PENDING,
    PREEMPTING,
    RAY_NOT_FOUND,
    RAY_SETTLED,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    WAITING,
    EventRecord,
    JobRecord,
    LogSnapshotRecord,
    SettingRecord,
    Store,
    default_db_url,
    submission_id,
)

__all__ = [
    "ACTIVE_STATES", "ADD_EVENT", "ADD_JOB", "ADMITTED", "CANCELLED", "EVENTS", "FAILED", "FINAL_STATES", "GET_JOB",
    "HISTORY_COLUMNS", "JOBS", "LIVE_STATES", "PENDING", "PREEMPTING", "RAY_NOT_FOUND", "RAY_SETTLED", "RUNNING",
    "STOPPED", "SUCCEEDED", "WAITING", "EventRecord", "JobRecord", "LogSnapshotRecord", "SettingRecord", "Store",
    "default_db_url", "submission_id",
]
