"""Services next to batch in the engine: reservations, bursts that take back lent headroom, the hot
reserve, scale-down, upgrades, RayCluster scale-ups (docs/admission.md, "Services next to batch")."""

from __future__ import annotations

from engine_helpers import admitted, engine, gpus, job, node, preempted, tree

from rayqueue.queue.workload import ReasonCode, WorkloadState
from rayqueue.quota.quantity import CPU, GPU
from rayqueue.scheduler.engine import Engine, Service, ServiceSpec, ServiceState
from rayqueue.scheduler.engine.services import UNSET_MAX_REPLICAS
from rayqueue.scheduler.engine.units import Unit, Units

NEVER = {"preemptionPolicy": "Never"}


def serving_tree(total: int = 16, serve_min: int = 4, serve_max: int | None = None) -> object:
    """root (``total`` GPUs) with a serving leaf (guaranteed ``serve_min``) and a batch leaf."""
    return tree(
        node("root", min={GPU: total}, max={GPU: total}, children=[
            node("serve", min={GPU: serve_min}, max={GPU: serve_max or total}, namespaces=["serve"], attributes=NEVER),
            node("batch", min={GPU: 0}, max={GPU: total}, namespaces=["batch"], attributes=NEVER),
        ])
    )


def service(uid: str, min_replicas: int = 2, max_replicas: int = 12, hot: int = 2, replicas: int | None = None,
            gpu: int = 1, queue: str = "serve") -> Service:
    spec = ServiceSpec(head={CPU: 1000}, replica=gpus(gpu), min_replicas=min_replicas, max_replicas=max_replicas,
                       hot_reserve=hot)
    return Service(uid=uid, queue=queue, spec=spec, replicas=min_replicas if replicas is None else replicas)


def used(e: Engine, name: str) -> int:
    return next(n for n in e.node_views() if n.name == name).used.get(GPU, 0) // 1000


def reserved(e: Engine, name: str) -> int:
    return next(n for n in e.node_views() if n.name == name).reserved.get(GPU, 0) // 1000


def assert_within_max(e: Engine) -> None:
    for n in e.node_views():
        for r, m in n.max.items():
            assert n.used.get(r, 0) <= m, (n.path, r, n.used.get(r, 0), m)


def test_a_burst_is_served_in_the_cycle_that_asks_while_batch_borrowed_the_headroom() -> None:
    e = engine(serving_tree())
    assert e.submit_service(service("web")) is None
    e.schedule(0.0)
    assert e.service("web").granted == 2
    # Batch fills everything but the service's replicas and its hot reserve: 12 of 16 GPUs.
    for i in range(4):
        e.submit(job(f"train-{i}", "batch", gpu=3, priority=i, at=float(i)))
    assert sorted(admitted(e.schedule(1.0))) == [f"train-{i}" for i in range(4)]
    assert used(e, "root") == 16 and reserved(e, "serve") == 8  # all 8 lent to batch

    e.scale_service("web", 8, now=2.0)
    decisions = e.schedule(2.0)
    # Six more GPUs: the two lowest-priority borrowers go, in this very cycle, and the replicas are granted.
    assert sorted(preempted(decisions)) == ["train-0", "train-1"]
    grants = e.service_grants()
    assert [g.replicas for g in grants][-1] == 8
    view = e.service("web")
    assert view.granted == 8 and view.scale_waited_s == 0.0 and view.preemptions == 2
    for d in decisions:
        assert d.reason.code == ReasonCode.RECLAIMED and "web" in d.reason.message
    assert_within_max(e)
    # The borrowers' pods stop later; confirming it releases nothing twice.
    e.suspended("train-0", 3.0)
    e.suspended("train-1", 3.0)
    assert used(e, "root") == 16 and used(e, "serve") == 10 + 2 - 2  # head's no GPU: 8 replicas + 2 hot
    assert_within_max(e)


def test_the_hot_reserve_is_never_lent() -> None:
    e = engine(serving_tree())
    e.submit_service(service("web", hot=3))
    e.schedule(0.0)
    e.submit(job("big", "batch", gpu=12))  # 16 - 2 replicas - 3 hot = 11 free
    e.submit(job("fits", "batch", gpu=11, at=1.0))
    decisions = e.schedule(1.0)
    assert admitted(decisions) == ["fits"]
    assert e.job("big").reason.code == ReasonCode.QUOTA_MAX_EXCEEDED
    # A burst of up to the hot reserve starts on the idle reserve; the reserve itself is restored at once
    # from the headroom lent to batch, so the next burst finds it idle again.
    e.scale_service("web", 5, now=2.0)
    assert preempted(e.schedule(2.0)) == ["fits"]
    view = e.service("web")
    assert view.granted == 5 and view.hot == {GPU: 3000}
    assert used(e, "root") == 5 + 3
    e.submit(job("small", "batch", gpu=9, at=3.0))  # 16 - 5 - 3 = 8 free: the reserve is not lent
    assert admitted(e.schedule(3.0)) == []
    assert_within_max(e)


def test_two_services_cannot_reserve_more_than_the_leafs_max() -> None:
    e = engine(serving_tree(total=16, serve_min=4, serve_max=16))
    e.submit_service(service("a", min_replicas=1, max_replicas=10, hot=0))
    e.submit_service(service("b", min_replicas=1, max_replicas=8, hot=0))
    e.schedule(0.0)
    assert e.service("a").state == ServiceState.RUNNING
    b = e.service("b")
    assert b.state == ServiceState.PENDING
    assert "serve would reserve 18 of max 16" in b.reason.message
    e.finish_service("a")
    e.schedule(1.0)
    assert e.service("b").state == ServiceState.RUNNING


def test_a_service_larger_than_a_max_is_rejected_with_the_limit() -> None:
    e = engine(serving_tree(total=16, serve_max=8))
    reason = e.submit_service(service("huge", max_replicas=9, hot=0))
    assert reason is not None and reason.code == ReasonCode.NEVER_FITS
    assert "maxReplicas 9" in reason.message and "root/serve" in reason.message


def test_scale_down_returns_replicas_to_headroom_and_wakes_batch() -> None:
    e = engine(serving_tree())
    e.submit_service(service("web", replicas=10, hot=2))
    e.schedule(0.0)
    assert e.service("web").granted == 10 and used(e, "root") == 12
    e.submit(job("train", "batch", gpu=6))
    e.schedule(1.0)
    assert e.job("train").state == WorkloadState.PENDING
    e.scale_service("web", 4, now=2.0)
    assert used(e, "root") == 6 and reserved(e, "serve") == 6
    assert admitted(e.schedule(2.0)) == ["train"]
    assert reserved(e, "serve") == 6 and used(e, "root") == 12  # 6 of the headroom lent


def test_replicas_beyond_ecs_go_to_acs_and_leave_first() -> None:
    units = Units([Unit("ecs", "ecs", capacity={GPU: 6000}), Unit("acs", "acs", capacity=None)])
    e = engine(serving_tree(), units)
    e.submit_service(service("web", replicas=4, hot=0))
    e.submit(job("train", "batch", gpu=3))
    e.schedule(0.0)
    assert e.service("web").by_unit == {"ecs": 4}  # services go first in a cycle
    assert e.job("train").unit == "acs"
    e.scale_service("web", 8, now=1.0)
    e.schedule(1.0)
    by_unit = e.service("web").by_unit
    assert by_unit == {"ecs": 6, "acs": 2}
    e.scale_service("web", 3, now=2.0)
    assert e.service("web").by_unit == {"ecs": 3}  # the ACS replicas went first


def test_an_upgrade_charges_both_clusters_and_says_so_when_it_does_not_fit() -> None:
    e = engine(serving_tree(total=16, serve_min=8, serve_max=16))
    e.submit_service(service("web", min_replicas=4, max_replicas=8, hot=0, replicas=4))
    e.schedule(0.0)
    e.submit(job("steady", "batch", gpu=8))
    e.schedule(1.0)
    assert used(e, "root") == 12
    new = ServiceSpec(head={CPU: 1000}, replica=gpus(1), min_replicas=6, max_replicas=8)
    e.begin_upgrade("web", new, replicas=6)
    e.schedule(2.0)
    view = e.service("web")
    assert not view.upgrading
    assert "charges both clusters" in view.reason.message and "root" in view.reason.message
    e.finish("steady")
    e.schedule(3.0)
    view = e.service("web")
    assert view.upgrading and used(e, "root") == 10
    e.finish_upgrade("web")
    assert e.service("web").granted == 6 and used(e, "root") == 6


def test_a_raycluster_scale_up_beyond_its_admitted_size_waits_with_a_reason() -> None:
    from rayqueue.queue.workload import Workload
    from rayqueue.scheduler.workloads.serving import raycluster_request, raycluster_scale_up

    pod = {"spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}
    manifest = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "notebook"},
                "spec": {"headGroupSpec": {"template": {"spec": {"containers": [{"name": "h"}]}}},
                         "workerGroupSpecs": [{"groupName": "g", "replicas": 4, "maxReplicas": 8, "template": pod}]}}
    admitted_size = raycluster_request(manifest)
    e = engine(serving_tree(total=8, serve_min=0))
    e.submit(Workload(uid="notebook", queue="batch", request=admitted_size.total, pods=admitted_size.pods))
    e.submit(job("other", "batch", gpu=3, at=1.0))
    assert sorted(admitted(e.schedule(0.0))) == ["notebook", "other"]
    # The autoscaler raises the group to 6: the 2 more GPUs are a request of their own that waits for
    # quota like any job, with its reason.
    manifest["spec"]["workerGroupSpecs"][0]["replicas"] = 6
    extra, pods = raycluster_scale_up(admitted_size, raycluster_request(manifest))
    assert (extra, pods) == ({GPU: 2000}, 2)
    e.submit(Workload(uid="notebook/scale-up-1", queue="batch", request=extra, pods=pods, submitted_at=2.0))
    assert admitted(e.schedule(2.0)) == []
    reason = e.explain("notebook/scale-up-1").reason
    assert reason.code == ReasonCode.QUOTA_MAX_EXCEEDED and "would use 9 of max 8" in reason.message
    e.finish("other")
    assert admitted(e.schedule(3.0)) == ["notebook/scale-up-1"]


def test_metrics_show_reserved_beside_used_and_the_services_replicas() -> None:
    from rayqueue.scheduler.metrics import Metrics

    e = engine(serving_tree())
    e.submit_service(service("web", replicas=3, hot=1))
    e.schedule(0.0)
    m = Metrics()
    m.update(e)
    text = m.exposition().decode()
    assert 'rayqueue_quota_resource_usage{quota_node="serve",resource="nvidia.com/gpu"} 4.0' in text  # 3 + 1 hot
    assert 'rayqueue_quota_resource_reserved{quota_node="serve",resource="nvidia.com/gpu"} 8.0' in text
    assert 'rayqueue_service_replicas{kind="granted",queue="serve",service="web"} 3.0' in text
    e.finish_service("web")
    m.update(e)
    assert "rayqueue_quota_resource_reserved{" not in m.exposition().decode()


def web_took_back_from_train() -> Engine:
    """``web`` scaled up to 4 replicas and took back the headroom ``train`` borrowed (train is preempted)."""
    e = engine(serving_tree())
    e.submit_service(service("web", hot=0))
    e.schedule(0.0)
    e.submit(job("train", "batch", gpu=14))
    e.schedule(1.0)
    e.scale_service("web", 4, now=2.0)
    assert preempted(e.schedule(2.0)) == ["train"]
    return e


def test_a_new_tree_or_policy_keeps_counting_services_and_handed_over_victims_once() -> None:
    e = web_took_back_from_train()
    before = {n.name: n.used for n in e.node_views()}
    e.set_tree(serving_tree())
    assert {n.name: n.used for n in e.node_views()} == before
    e.set_units(Units([Unit("ecs", "ecs", capacity={GPU: 16000})]))
    assert e.unit_views()[0].used.get(GPU) == 4000  # the service's replicas; train's went to it
    e.suspended("train", 3.0)
    assert used(e, "root") == 4 and e.unit_views()[0].used.get(GPU) == 4000


def test_a_restart_restores_the_service_and_its_victims_without_counting_twice() -> None:
    live = web_took_back_from_train()
    again = engine(serving_tree())
    view = live.service("web")
    again.restore_service(service("web", hot=0, replicas=4), view.granted, view.by_unit, admitted_at=0.0)
    again.restore(job("train", "batch", gpu=14), "default", 1.0, preempted_by="web")
    assert [n.used for n in again.node_views()] == [n.used for n in live.node_views()]
    for e in (live, again):
        e.suspended("train", 3.0)
        assert used(e, "root") == 4


def test_the_forecast_counts_what_running_services_hold() -> None:
    from rayqueue.scheduler.engine.forecast import forecast_starts

    e = engine(serving_tree(total=8, serve_min=4, serve_max=8))
    e.submit_service(service("web", min_replicas=2, max_replicas=4, hot=0, replicas=4))
    e.schedule(0.0)
    running = job("train", "batch", gpu=4)
    running.expected_duration = 100.0
    e.submit(running)
    e.submit(job("next", "batch", gpu=4, at=1.0))
    e.schedule(1.0)
    assert e.job("next").state == WorkloadState.PENDING
    # The service holds 4 of the 8 GPUs: "next" starts when "train" ends, not at once.
    assert forecast_starts(e, 1.0)["next"] == 101.0


def test_an_unset_max_is_capped_where_the_service_alone_can_be_admitted_beside_a_sibling_s_min() -> None:
    # root 8 GPUs; batch guarantees 2 of them, so a reservation in "serve" can reach at most 6 (the root's
    # max less the sibling's min), not 8: a cap of 8 would be a reservation no cycle ever admits.
    e = engine(tree(
        node("root", min={GPU: 8}, max={GPU: 8}, children=[
            node("serve", min={GPU: 2}, max={GPU: 8}, namespaces=["serve"], attributes=NEVER),
            node("batch", min={GPU: 2}, max={GPU: 8}, namespaces=["batch"], attributes=NEVER),
        ])
    ))
    web = service("web", min_replicas=1, max_replicas=UNSET_MAX_REPLICAS, hot=0)
    assert e.submit_service(web) is None
    assert any("capped at 6 replicas" in note for note in web.notes)
    e.schedule(0.0)
    view = e.service("web")
    assert view.state == ServiceState.RUNNING, view.reason
    assert view.max_replicas == 6


def test_a_scale_up_takes_the_room_of_a_batch_job_already_stopping_for_a_reclaim() -> None:
    e = engine(tree(
        node("root", min={GPU: 8}, max={GPU: 8}, children=[
            node("serve", min={GPU: 4}, max={GPU: 8}, namespaces=["serve"]),
            node("batch", min={GPU: 4}, max={GPU: 8}, namespaces=["batch"]),
        ])
    ))
    assert e.submit_service(service("web", min_replicas=0, max_replicas=4, hot=0)) is None
    e.schedule(0.0)
    e.submit(job("lend", "batch", gpu=8, at=1.0))
    assert admitted(e.schedule(1.0)) == ["lend"]  # batch borrows serve's guarantee and the reservation
    e.submit(job("mine", "serve", gpu=2, at=2.0))
    assert preempted(e.schedule(2.0)) == ["lend"]  # reclaim: lend is stopping, its quota still held
    e.scale_service("web", 2, now=3.0)
    e.schedule(3.0)
    # The burst does not wait for lend's pods: it takes the quota lend is giving back, without a second stop.
    view = e.service("web")
    assert view.granted == 2 and view.scale_waited_s == 0.0
    assert_within_max(e)
    e.suspended("lend", 4.0)  # confirming the stop releases nothing twice
    assert used(e, "root") == 2
    assert_within_max(e)
