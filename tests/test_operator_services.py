"""The operator against kmock: RayService and RayCluster as queued workloads (issue 12, front end).

KubeRay's side is played by the test itself where it matters (the autoscaler raising a worker group's
replicas, a zero-downtime upgrade's status); every version of a RayService or RayCluster the API held is
checked against KubeRay's CRD at the end, so the operator's patches stay within KubeRay's schema.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import kmock
import pytest
from kmock_cluster import RAYCLUSTERS, RAYSERVICES, _close_schema
from operator_env import NODES, POLICIES, TREES, Env, environment, eventually, node, policy_manifest, rayjob

from rayqueue.scheduler.operator.rayjobs import ADMISSION_ANNOTATION, CONDITION_ANNOTATION
from rayqueue.scheduler.workloads.serving import HOT_RESERVE_ANNOTATION

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a hang guard; waits end at their event

KUBERAY = Path(__file__).resolve().parents[1] / "data" / "kuberay"


def _validator(crd: str) -> Any:
    import jsonschema
    import yaml

    with open(KUBERAY / crd) as f:
        doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in doc["spec"]["versions"] if v["name"] == "v1")
    schema = _close_schema(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def _plain(value: Any) -> Any:
    """kmock keeps versions as its own mapping types: plain dicts and lists for jsonschema."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def crd_violations(env: Env) -> list[str]:
    """Every version of every RayService and RayCluster the API held that breaks KubeRay's CRD."""
    out = []
    for plural, crd in ((RAYSERVICES, "ray.io_rayservices.yaml"), (RAYCLUSTERS, "ray.io_rayclusters.yaml")):
        validator = _validator(crd)
        resource = kmock.resource(plural)
        for key, obj in env.server.objects.items():
            if key[0] != resource:
                continue
            for version in obj.history:
                if version is not None:
                    out += [f"{key[2]}: {e.message[:160]}" for e in validator.iter_errors(_plain(version))]
    return out


@asynccontextmanager
async def serving_env(**kw: Any) -> AsyncIterator[Env]:
    async with environment(**kw) as env:
        yield env
        assert crd_violations(env) == []


def _pod(role: str, cpu: str) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": f"ray-{role}", "image": "rayproject/ray:2.46.0",
                                     "resources": {"requests": {"cpu": cpu, "memory": "1Gi"},
                                                   "limits": {"cpu": cpu, "memory": "1Gi"}}}]}}


def rayservice(name: str, namespace: str, *, replicas: int = 1, low: int = 1, high: int = 5, hot: int = 0,
               cpu: str = "1", suspend: bool = True) -> dict[str, Any]:
    """A RayService whose head and every worker replica ask ``cpu``; the worker group autoscales in
    [low, high] (the in-tree autoscaler edits ``replicas``)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "annotations": {}}
    if hot:
        meta["annotations"][HOT_RESERVE_ANNOTATION] = str(hot)
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": meta, "spec": {
        "suspend": suspend,
        "rayClusterConfig": {
            "rayVersion": "2.46.0", "enableInTreeAutoscaling": True,
            "headGroupSpec": {"rayStartParams": {}, "template": _pod("head", cpu)},
            "workerGroupSpecs": [{"groupName": "serve", "replicas": replicas, "minReplicas": low,
                                  "maxReplicas": high, "rayStartParams": {}, "template": _pod("worker", cpu)}],
        },
    }}


def raycluster(name: str, namespace: str, *, workers: int = 1, cpu: str = "1", high: int = 8) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": name, "namespace": namespace},
            "spec": {"suspend": True, "rayVersion": "2.46.0", "enableInTreeAutoscaling": True,
                     "headGroupSpec": {"rayStartParams": {}, "template": _pod("head", cpu)},
                     "workerGroupSpecs": [{"groupName": "workers", "replicas": workers, "minReplicas": 0,
                                           "maxReplicas": high, "rayStartParams": {},
                                           "template": _pod("worker", cpu)}]}}


def obj(env: Env, plural: str, namespace: str, name: str) -> dict[str, Any]:
    body = env.server.obj(plural, namespace, name)
    assert body is not None
    return body


def record(env: Env, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    raw = (obj(env, plural, namespace, name)["metadata"].get("annotations") or {}).get(ADMISSION_ANNOTATION)
    return json.loads(raw) if raw else None


def cond(env: Env, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    raw = (obj(env, plural, namespace, name)["metadata"].get("annotations") or {}).get(CONDITION_ANNOTATION)
    return json.loads(raw) if raw else None


async def autoscale(env: Env, plural: str, namespace: str, name: str, replicas: int) -> None:
    """What KubeRay's autoscaler does: rewrite the worker group's ``replicas`` (the whole list)."""
    body = obj(env, plural, namespace, name)
    spec = body["spec"]["rayClusterConfig"] if plural == RAYSERVICES else body["spec"]
    groups = copy.deepcopy(spec["workerGroupSpecs"])
    groups[0]["replicas"] = replicas
    patch = {"spec": {"rayClusterConfig": {"workerGroupSpecs": groups}}} if plural == RAYSERVICES else \
        {"spec": {"workerGroupSpecs": groups}}
    await env.api.patch(plural, namespace, name, patch)


def used(env: Env, node: str) -> str:
    tree = env.server.obj(TREES, "kube-system", "elasticquotatree")
    assert tree is not None
    return str(((tree.get("status") or {}).get("nodes") or {}).get(node, {}).get("used", {}).get("cpu", "0"))


# The serving team is guaranteed 6 CPU (head 1 + up to 5 one-CPU replicas); batch is guaranteed 2 and
# may borrow up to the cluster's 8.
def serving_tree(serve: tuple[str, str] = ("6", "8"), batch: tuple[str, str] = ("2", "8")) -> dict[str, Any]:
    from operator_env import tree_manifest

    return tree_manifest({"serve": serve, "batch": batch}, root_min="8", root_max="8",
                         attributes={"batch": {"preemptionPolicy": "Never"}})


async def test_burst_is_served_in_one_cycle_and_borrowers_are_preempted() -> None:
    async with serving_env(runtime=600) as env:
        await env.create(TREES, serving_tree())
        await env.start_operator()
        await env.create(RAYSERVICES, rayservice("web", "serve", replicas=1, low=1, high=5))
        await eventually(lambda: record(env, RAYSERVICES, "serve", "web"), what="web admitted")
        web = obj(env, RAYSERVICES, "serve", "web")
        assert web["spec"]["suspend"] is False
        assert record(env, RAYSERVICES, "serve", "web")["byUnit"] == {"default": 1}
        # Batch borrows the service's idle headroom: 3 jobs x 2 CPU beside the service's 2.
        for i in range(3):
            await env.create_job(rayjob(f"b{i}", "batch"))
        await eventually(lambda: all(env.running("batch", f"b{i}") for i in range(3)), what="batch borrowing")
        # The burst: the autoscaler asks 5 replicas. Granted at once; two borrowers give way, newest first.
        await autoscale(env, RAYSERVICES, "serve", "web", 5)
        await eventually(lambda: record(env, RAYSERVICES, "serve", "web")["granted"] == 5, what="scale-up granted")
        scaled = await eventually(lambda: env.events("web", "ScaledUp"), what="ScaledUp event")
        assert "5 replicas" in scaled[0]["message"]
        assert env.running("batch", "b0") and not env.running("batch", "b1") and not env.running("batch", "b2")
        for victim in ("b1", "b2"):
            preempted = await eventually(lambda v=victim: env.events(v, "Preempted"), what=f"{victim} preempted")
            assert len(preempted) == 1 and "RayService serve/web" in preempted[0]["message"]
        assert not env.events("b0", "Preempted")
        await eventually(lambda: used(env, "serve") == "6", what="the service charged 6 CPU")
        assert env.events("web", "Admitted")


async def test_hot_reserve_is_never_lent() -> None:
    async with serving_env(runtime=600) as env:
        await env.create(TREES, serving_tree())
        await env.start_operator()
        # 1 replica running and 2 held hot: 4 CPU of the cluster's 8 are the service's.
        await env.create(RAYSERVICES, rayservice("web", "serve", replicas=1, low=1, high=5, hot=2))
        await eventually(lambda: record(env, RAYSERVICES, "serve", "web"), what="web admitted")
        for i in range(3):
            await env.create_job(rayjob(f"b{i}", "batch"))
        await eventually(lambda: env.running("batch", "b0") and env.running("batch", "b1"), what="two borrow")
        queued = await eventually(lambda: env.events("b2", "Queued"), what="the third job waits")
        assert "position" in queued[0]["message"]
        assert not env.running("batch", "b2")
        # The hot reserve is charged like running replicas (head 1 + 1 replica + 2 hot), so batch never gets it.
        await eventually(lambda: used(env, "serve") == "4", what="the hot reserve counted as used")
        assert env.running("batch", "b0") and env.running("batch", "b1") and not env.running("batch", "b2")


async def test_scale_down_returns_headroom_to_a_waiting_job() -> None:
    async with serving_env(runtime=600) as env:
        await env.create(TREES, serving_tree())
        await env.start_operator()
        await env.create(RAYSERVICES, rayservice("web", "serve", replicas=5, low=1, high=5))
        await eventually(lambda: (record(env, RAYSERVICES, "serve", "web") or {}).get("granted") == 5,
                         what="web admitted with 5 replicas")
        for i in range(2):
            await env.create_job(rayjob(f"b{i}", "batch"))
        await eventually(lambda: env.running("batch", "b0"), what="b0 on batch's own 2 CPU")
        await eventually(lambda: env.events("b1", "Queued"), what="b1 waits")
        await autoscale(env, RAYSERVICES, "serve", "web", 2)
        await eventually(lambda: env.running("batch", "b1"), what="b1 admitted on the returned headroom")
        await eventually(lambda: record(env, RAYSERVICES, "serve", "web")["granted"] == 2, what="record follows")


async def test_raycluster_gate() -> None:
    async with serving_env(runtime=600) as env:
        await env.create(TREES, serving_tree(serve=("2", "2"), batch=("6", "6")))
        await env.start_operator()
        await env.create(RAYCLUSTERS, raycluster("lab", "batch", workers=3))  # 4 CPU: fits in 6
        await eventually(lambda: obj(env, RAYCLUSTERS, "batch", "lab")["spec"]["suspend"] is False,
                         what="lab unsuspended")
        rec = record(env, RAYCLUSTERS, "batch", "lab")
        assert rec is not None and rec["total"]["cpu"] == 4000
        head = obj(env, RAYCLUSTERS, "batch", "lab")["spec"]["headGroupSpec"]["template"]
        assert head["metadata"]["labels"]["rayqueue.io/unit"] == "default"
        await eventually(lambda: env.events("lab", "Admitted"), what="Admitted event")
        # A second cluster does not fit: it waits, suspended, with a reason.
        await env.create(RAYCLUSTERS, raycluster("big", "batch", workers=3))
        queued = await eventually(lambda: env.events("big", "Queued"), what="big waits")
        assert "max" in queued[0]["message"] or "quota" in queued[0]["message"]
        await eventually(lambda: (cond(env, RAYCLUSTERS, "batch", "big") or {}).get("type") == "Queued",
                         what="big's condition")
        assert obj(env, RAYCLUSTERS, "batch", "big")["spec"]["suspend"] is True
        # The autoscaler grows lab beyond its admitted size: that scale-up waits with a reason too.
        await autoscale(env, RAYCLUSTERS, "batch", "lab", 6)  # 3 CPU more: 7 of batch's max 6
        waits = await eventually(lambda: env.events("lab", "ScaleUpWaits"), what="lab's scale-up waits")
        assert "cpu=3" in waits[0]["message"] and "max" in waits[0]["message"]
        # Deleting lab frees its quota: big is admitted.
        await env.api.delete(RAYCLUSTERS, "batch", "lab")
        await eventually(lambda: obj(env, RAYCLUSTERS, "batch", "big")["spec"]["suspend"] is False,
                         what="big admitted")


async def test_zero_downtime_upgrade_charges_both_clusters() -> None:
    async with serving_env(runtime=600) as env:
        await env.create(TREES, serving_tree(serve=("8", "8"), batch=("0", "8")))
        await env.start_operator()
        await env.create(RAYSERVICES, rayservice("web", "serve", replicas=1, low=1, high=2))
        await eventually(lambda: record(env, RAYSERVICES, "serve", "web"), what="web admitted")
        await env.api.patch(RAYSERVICES, "serve", "web", {"status": {
            "activeServiceStatus": {"rayClusterName": "web-old"}}}, sub="status")
        await eventually(lambda: used(env, "serve") == "2", what="one cluster charged")
        # A new image (and a bigger head): KubeRay starts a second cluster beside the first.
        body = obj(env, RAYSERVICES, "serve", "web")
        head = copy.deepcopy(body["spec"]["rayClusterConfig"]["headGroupSpec"])
        head["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "2"
        head["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "2"
        await env.api.patch(RAYSERVICES, "serve", "web", {"spec": {"rayClusterConfig": {"headGroupSpec": head}}})
        await env.api.patch(RAYSERVICES, "serve", "web", {"status": {
            "pendingServiceStatus": {"rayClusterName": "web-new"}}}, sub="status")
        await eventually(lambda: env.events("web", "UpgradeAdmitted"), what="upgrade charged")
        await eventually(lambda: used(env, "serve") == "5", what="both clusters charged (2 + 3)")
        # KubeRay switches traffic and deletes the old cluster.
        await env.api.patch(RAYSERVICES, "serve", "web", {"status": {
            "activeServiceStatus": {"rayClusterName": "web-new"}, "pendingServiceStatus": None}}, sub="status")
        await eventually(lambda: env.events("web", "UpgradeDone"), what="upgrade done")
        await eventually(lambda: used(env, "serve") == "3", what="only the new cluster charged")


async def test_restart_restores_services_and_their_preemptions() -> None:
    async with serving_env(runtime=600, suspend_delay=600) as env:
        await env.create(TREES, serving_tree())
        op = await env.start_operator()
        await env.create(RAYSERVICES, rayservice("web", "serve", replicas=1, low=1, high=5))
        await eventually(lambda: record(env, RAYSERVICES, "serve", "web"), what="web admitted")
        for i in range(3):
            await env.create_job(rayjob(f"b{i}", "batch"))
        await eventually(lambda: all(env.phase("batch", f"b{i}") == "Running" for i in range(3)),
                         what="batch running")
        await autoscale(env, RAYSERVICES, "serve", "web", 4)
        # KubeRay takes long to stop the victim (suspend_delay): the restart finds it still Suspending.
        await eventually(lambda: env.phase("batch", "b2") == "Suspending", what="b2 being preempted")
        await eventually(lambda: record(env, RAYSERVICES, "serve", "web")["granted"] == 4, what="granted 4")
        await op.stop()
        op2 = await env.start_operator(identity="op-2")
        engine = await eventually(lambda: op2.controller.engine, what="engine rebuilt")
        uid = obj(env, RAYSERVICES, "serve", "web")["metadata"]["uid"]
        view = await eventually(lambda: engine.service(uid), what="service restored")
        assert view.granted == 4 and view.by_unit == {"default": 4}
        victim = engine.job(obj(env, "ray.io/v1/rayjobs", "batch", "b2")["metadata"]["uid"])
        assert victim is not None and victim.preempted_by == uid  # resumed, not decided again
        assert len(env.events("b2", "Preempted")) == 1
        assert len(env.events("web", "Admitted")) == 1



async def test_mutating_webhook_creates_rayservices_and_rayclusters_suspended() -> None:
    import base64

    from test_operator_webhooks import free_port, post, review

    from rayqueue.scheduler.operator.handlers import WebhookConfig

    port = free_port()
    async with serving_env(runtime=600) as env:
        await env.create(TREES, serving_tree())
        await env.start_operator(webhook=WebhookConfig(port=port, addr="127.0.0.1", insecure=True))
        await eventually(lambda: env.operators[0].controller.tree is not None, what="tree loaded")
        for body, plural in ((rayservice("web", "serve", suspend=False), "rayservices"),
                             (raycluster("lab", "batch"), "rayclusters")):
            body["spec"].pop("suspend", None)
            response = await post(port, "suspend-serving", review(body, "ray.io", "v1", plural))
            ops = {op["path"]: op["value"] for op in json.loads(base64.b64decode(response["patch"]))}
            assert ops["/spec/suspend"] is True, plural
            assert any("waits in its queue" in w for w in response.get("warnings", []))
        # Elsewhere (no leaf, no queue label) nothing changes.
        other = await post(port, "suspend-serving",
                           review(rayservice("x", "elsewhere", suspend=False), "ray.io", "v1", "rayservices"))
        assert other["allowed"] is True and not other.get("patch")


async def test_two_services_cannot_reserve_beyond_the_leaf_max_and_notes_are_events() -> None:
    async with serving_env(runtime=600) as env:
        await env.create(TREES, serving_tree(batch=("0", "8")))
        await env.start_operator()
        # KubeRay's CRD requires maxReplicas; int32 max is its "no bound" (the samples' older default).
        capped = rayservice("capped", "serve", replicas=1, low=1, high=2**31 - 1)
        await env.create(RAYSERVICES, capped)
        # head 1 + 7 replicas = serve's max 8
        await eventually(lambda: any("capped at 7 replicas" in e["message"] for e in env.events("capped", "Note")),
                         what="the engine's cap told as an event")
        await eventually(lambda: record(env, RAYSERVICES, "serve", "capped"), what="capped admitted")
        await env.create(RAYSERVICES, rayservice("second", "serve", replicas=1, low=1, high=2))
        queued = await eventually(lambda: env.events("second", "Queued"), what="second waits")
        assert "reservation does not fit" in queued[0]["message"] and "max" in queued[0]["message"]
        assert (cond(env, RAYSERVICES, "serve", "second") or {}).get("type") == "Queued"
        assert obj(env, RAYSERVICES, "serve", "second")["spec"]["suspend"] is True
        await env.api.delete(RAYSERVICES, "serve", "capped")
        await eventually(lambda: record(env, RAYSERVICES, "serve", "second"), what="second admitted")


async def test_a_stale_event_from_before_the_admission_releases_nothing() -> None:
    async with serving_env(runtime=600) as env:
        await env.create(TREES, serving_tree(serve=("6", "8"), batch=("2", "8")))
        op = await env.start_operator()
        created_web = await env.create(RAYSERVICES, rayservice("web", "serve"))
        created_lab = await env.create(RAYCLUSTERS, raycluster("lab", "batch"))
        await eventually(lambda: record(env, RAYSERVICES, "serve", "web"), what="web admitted")
        await eventually(lambda: record(env, RAYCLUSTERS, "batch", "lab"), what="lab admitted")
        engine = op.controller.engine
        assert engine is not None
        # A watch may still deliver the versions from before our admission patches (suspended, no record).
        await op.controller.on_rayservice("MODIFIED", created_web)
        await op.controller.on_raycluster("MODIFIED", created_lab)
        web = engine.service(created_web["metadata"]["uid"])
        lab = engine.job(created_lab["metadata"]["uid"])
        assert web is not None and web.state == "Running"
        assert lab is not None and lab.state == "Admitted"


async def test_an_admission_the_api_refused_is_undone_and_tried_again() -> None:
    async with serving_env(runtime=600) as env:
        await env.create(TREES, serving_tree())
        await env.start_operator()
        # More 500s than the client retries: the first admission patches of each kind are not written.
        env.server.inject("PATCH", "rayservices", status=500, times=8, subresource=None)
        env.server.inject("PATCH", "rayclusters", status=500, times=8, subresource=None)
        await env.create(RAYSERVICES, rayservice("web", "serve"))
        await env.create(RAYCLUSTERS, raycluster("lab", "batch"))
        await eventually(lambda: obj(env, RAYSERVICES, "serve", "web")["spec"]["suspend"] is False,
                         what="web admitted on a later try")
        await eventually(lambda: obj(env, RAYCLUSTERS, "batch", "lab")["spec"]["suspend"] is False,
                         what="lab admitted on a later try")
        assert record(env, RAYSERVICES, "serve", "web")["granted"] == 1


def _allowed_by_rbac() -> set[tuple[str, str, str]]:
    """(verb, apiGroup, resource) the operator's ClusterRole in deploy/ grants."""
    import yaml

    out = set()
    with open(Path(__file__).resolve().parents[1] / "deploy" / "02-rbac.yaml") as f:
        for doc in yaml.safe_load_all(f):
            if doc and doc.get("kind") == "ClusterRole":
                for rule in doc["rules"]:
                    for group in rule["apiGroups"]:
                        for res in rule["resources"]:
                            out |= {(verb, group, res) for verb in rule["verbs"]}
    return out


def _rbac_need(method: str, path: str) -> tuple[str, str, str] | None:
    """What RBAC a request needs (verb, apiGroup, resource[/subresource]); None: discovery."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        rest = rest[2:]
    if not rest:
        return None
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    verb = {"PATCH": "patch", "POST": "create", "DELETE": "delete", "PUT": "update"}.get(method)
    if verb is None:
        verb = "get" if len(rest) > 1 else "list"
    return verb, group, resource


async def test_the_operator_needs_no_more_than_its_cluster_role_grants() -> None:
    from kmock_cluster import ADMIN_TOKEN

    async with serving_env(runtime=600) as env:
        env.server.record = True
        await env.create(TREES, serving_tree())
        await env.start_operator()
        await env.create(RAYSERVICES, rayservice("web", "serve", replicas=1, low=1, high=5))
        await env.create(RAYCLUSTERS, raycluster("lab", "batch", workers=1))
        await eventually(lambda: record(env, RAYSERVICES, "serve", "web"), what="web admitted")
        await eventually(lambda: record(env, RAYCLUSTERS, "batch", "lab"), what="lab admitted")
        await env.create_job(rayjob("b0", "batch"))
        await eventually(lambda: env.running("batch", "b0"), what="b0 borrowing")
        await autoscale(env, RAYSERVICES, "serve", "web", 5)  # takes back headroom: b0 or lab preempted
        await eventually(lambda: record(env, RAYSERVICES, "serve", "web")["granted"] == 5, what="scale-up")
        await eventually(lambda: env.events(reason="Preempted"), what="a borrower preempted")
        granted = _allowed_by_rbac()
        needed = {need for s in env.server.seen if s.token != ADMIN_TOKEN
                  if (need := _rbac_need(s.method, s.path)) is not None}
        assert ("patch", "ray.io", "rayservices") in needed and ("list", "ray.io", "rayclusters") in needed
        assert needed - granted == set()


async def test_a_service_over_two_units_gets_the_head_unit_for_its_head_and_every_units_tolerations_for_workers(
) -> None:
    # ECS then ACS: the head sits in the first unit with room, the replicas spill from unit to unit as
    # they scale, so the workers carry every unit's tolerations and no nodeSelector of their own.
    acs_toleration = {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}
    async with serving_env(runtime=600) as env:
        await env.create(TREES, serving_tree())
        await env.create(NODES, node("ecs-1", "8", {"node.alibabacloud.com/pool": "ecs"}))
        await env.create(POLICIES, policy_manifest([
            {"resource": "ecs", "nodeSelector": {"node.alibabacloud.com/pool": "ecs"}},
            {"resource": "acs", "nodeSelector": {"type": "virtual-kubelet"}, "max": 10,
             "tolerations": [acs_toleration]},
        ]))
        await env.start_operator()
        await env.create(RAYSERVICES, rayservice("web", "serve", replicas=1, low=1, high=5))
        await eventually(lambda: record(env, RAYSERVICES, "serve", "web"), what="web admitted")
        cluster = obj(env, RAYSERVICES, "serve", "web")["spec"]["rayClusterConfig"]
        head = cluster["headGroupSpec"]["template"]
        assert head["spec"]["nodeSelector"] == {"node.alibabacloud.com/pool": "ecs"}
        worker = cluster["workerGroupSpecs"][0]["template"]
        assert acs_toleration in worker["spec"]["tolerations"]
        assert not worker["spec"].get("nodeSelector")
        assert "rayqueue.io/unit" not in worker["metadata"]["labels"]
