"""The admission engine: quota tree + queues + ResourcePolicy units, no I/O.

Front ends import ``Engine`` (and the types it takes and returns) from here. Not compiled: the modules
beside it are (see ``setup.py``), and calls between them stay native.
"""

from rayqueue.scheduler.engine.decisions import Admit, Decision, Placement, Preempt, Reject, ServiceGrant
from rayqueue.scheduler.engine.errors import DuplicateJob, UnknownQueue
from rayqueue.scheduler.engine.facade import Engine
from rayqueue.scheduler.engine.preview import TreeEffect
from rayqueue.scheduler.engine.services import Service, ServiceError, ServiceSpec, ServiceState, ServiceView
from rayqueue.scheduler.engine.state import EngineConfig, EngineStats
from rayqueue.scheduler.engine.views import Explanation, JobView, NodeView, QueueView, TreeView, UnitView

__all__ = [
    "Admit",
    "Decision",
    "DuplicateJob",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "Explanation",
    "JobView",
    "NodeView",
    "Placement",
    "Preempt",
    "QueueView",
    "Reject",
    "Service",
    "ServiceError",
    "ServiceGrant",
    "ServiceSpec",
    "ServiceState",
    "ServiceView",
    "TreeEffect",
    "TreeView",
    "UnitView",
    "UnknownQueue",
]
