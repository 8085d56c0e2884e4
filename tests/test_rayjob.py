"""The request of a RayJob: every KubeRay sample, hand-computed totals, and the counting rules."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rayqueue.quota.quantity import CPU, GPU, MEMORY, parse_quantity
from rayqueue.scheduler.workloads import rayjob_schema
from rayqueue.scheduler.workloads.rayjob import (
    PRIORITY_LABEL,
    QUEUE_LABEL,
    RayJobRejected,
    crd_violations,
    load_rayjob_documents,
    rayjob_request,
)
from rayqueue.scheduler.workloads.rayjob import (
    rayjob_schema as stored_schema,
)

KUBERAY = Path(__file__).resolve().parents[1] / "data" / "kuberay"  # vendored, unchanged: data/README.md
SAMPLES = KUBERAY / "samples"
KUBERAY_CRD = KUBERAY / "ray.io_rayjobs.yaml"

Gi = 2**30 * 1000
Mi = 2**20 * 1000
G = 10**9 * 1000


def q(text: str) -> int:
    return parse_quantity(text)


def sample(name: str) -> dict[str, Any]:
    docs = load_rayjob_documents((SAMPLES / name).read_text(), name)
    assert len(docs) == 1, f"{name} should hold exactly one RayJob"
    return docs[0]


# ------------------------------------------------------------------------------ every sample


def all_sample_jobs() -> list[tuple[str, dict[str, Any]]]:
    jobs = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in load_rayjob_documents(path.read_text(), path.name):
            jobs.append((path.name, doc))
    return jobs


def test_the_samples_are_all_there() -> None:
    names = {name for name, _ in all_sample_jobs()}
    # KubeRay's 24 sample files: 23 RayJob files; ray-cluster.sample.yaml holds a RayCluster only and yields no job.
    assert len(list(SAMPLES.glob("*.yaml"))) == 24
    assert len(names) == 23
    assert "ray-cluster.sample.yaml" not in names


@pytest.mark.parametrize("name,doc", all_sample_jobs(), ids=[n for n, _ in all_sample_jobs()])
def test_every_sample_yields_a_request_or_a_clear_rejection(name: str, doc: dict[str, Any]) -> None:
    try:
        req = rayjob_request(doc)
    except RayJobRejected as exc:
        assert doc["spec"].get("clusterSelector"), f"{name} rejected unexpectedly: {exc}"
        assert "clusterSelector" in exc.message and "not queued" in exc.message
        return
    assert req.pods >= 1 and req.pod_sets[0].role == "head" and req.pod_sets[0].count == 1
    assert req.total.get(CPU, 0) > 0
    assert req.name and req.name == (doc["metadata"].get("name") or doc["metadata"].get("generateName"))
    assert req.pods == sum(p.count for p in req.pod_sets)


def test_kueue_toy_sample_by_hand() -> None:
    req = rayjob_request(sample("ray-job.kueue-toy-sample.yaml"))
    # head 1 CPU / 2Gi (the request, not the 5Gi limit) + 1 worker 1 CPU / 1Gi + submitter 500m / 200Mi
    assert req.total == {CPU: q("2.5"), MEMORY: 3 * Gi + 200 * Mi}
    assert req.pods == 3
    assert req.name == "rayjob-sample-" and req.generate_name
    assert [(p.name, p.role, p.count) for p in req.pod_sets] == [
        ("head", "head", 1),
        ("small-group", "worker", 1),
        ("submitter", "submitter", 1),
    ]
    assert req.shutdown_after_job_finishes is True
    assert req.submission_mode == "K8sJobMode"


def test_sample_worker_without_memory_and_limit_above_request() -> None:
    req = rayjob_request(sample("ray-job.sample.yaml"))
    # worker: requests cpu 200m (limit 1 is ignored, a request is given), no memory at all
    assert req.pod_sets[1].per_pod == {CPU: 200}
    assert req.total == {CPU: q("1.7"), MEMORY: 2 * Gi + 200 * Mi}


def test_custom_submitter_template_counts_what_it_says() -> None:
    req = rayjob_request(sample("ray-job.light-weight-submitter.yaml"))
    submitter = req.pod_sets[-1]
    assert submitter.role == "submitter" and submitter.count == 1
    assert submitter.per_pod == {}  # its template requests nothing, so nothing is added
    assert req.total == {CPU: q("2"), MEMORY: 3 * Gi}
    assert req.pods == 3


def test_interactive_mode_has_no_submitter() -> None:
    req = rayjob_request(sample("ray-job.interactive-mode.yaml"))
    assert req.submission_mode == "InteractiveMode"
    assert [p.role for p in req.pod_sets] == ["head", "worker"]
    assert req.pods == 2 and req.total == {CPU: q("2"), MEMORY: 3 * Gi}


def test_sidecar_mode_puts_the_submitter_in_the_head_pod() -> None:
    req = rayjob_request(sample("ray-job.sidecar-mode.yaml"))
    assert req.pods == 2
    assert req.pod_sets[0].per_pod == {CPU: q("1.5"), MEMORY: 2 * Gi + 200 * Mi}
    assert any("SidecarMode" in note for note in req.notes)


def test_http_mode_has_no_submitter() -> None:
    doc = sample("ray-job.kueue-toy-sample.yaml")
    doc["spec"]["submissionMode"] = "HTTPMode"
    req = rayjob_request(doc)
    assert req.pods == 2 and req.total == {CPU: q("2"), MEMORY: 3 * Gi}


def test_tpu_multihost_multiplies_num_of_hosts_and_carries_tpus() -> None:
    req = rayjob_request(sample("ray-job.tpu-v6e-16-multihost.yaml"))
    workers = req.pod_sets[1]
    assert (workers.name, workers.count) == ("tpu-group", 4)  # replicas 1 x numOfHosts 4
    assert workers.per_pod == {CPU: q("24"), "google.com/tpu": q("4"), MEMORY: 200 * G}
    assert req.pods == 6
    assert req.total == {CPU: q("104.5"), "google.com/tpu": q("16"), MEMORY: 840 * G + 200 * Mi}

    big = rayjob_request(sample("ray-job.tpu-v6e-256-multihost.yaml"))
    assert big.pods == 66 and big.total["google.com/tpu"] == q("256")


def test_gpu_sample() -> None:
    req = rayjob_request(sample("ray-job.pytorch-image-classifier.yaml"))
    assert req.pods == 6
    assert req.total[GPU] == q("4")
    assert req.total[CPU] == q("5.5")  # head 1 + 4 x 1 + submitter 0.5
    assert req.total[MEMORY] == 5 * 8 * G + 200 * Mi


def test_existing_cluster_is_rejected_with_the_reason() -> None:
    with pytest.raises(RayJobRejected) as info:
        rayjob_request(sample("ray-job.use-existing-raycluster.yaml"))
    message = info.value.message
    assert "rayjob-use-existing-raycluster" in message
    assert "spec.clusterSelector (ray.io/cluster=ray-cluster-kuberay)" in message
    assert "existing RayCluster" in message and "not queued" in message


# ------------------------------------------------------------------------------ rules, one by one


def job(*workers: dict[str, Any], head: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A minimal valid RayJob; containers given as ``{"requests": ..., "limits": ...}``."""
    head = head or {"containers": [container("ray-head", requests={"cpu": "1", "memory": "1Gi"})]}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "j", "namespace": "team-a", "labels": {}},
        "spec": {
            "entrypoint": "python -c 'print(1)'",
            "rayClusterSpec": {
                "headGroupSpec": {"rayStartParams": {}, "template": {"spec": head}},
                "workerGroupSpecs": list(workers),
            },
            **spec,
        },
    }


def container(name: str, requests: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
              **extra: Any) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = requests
    if limits is not None:
        resources["limits"] = limits
    return {"name": name, "image": "rayproject/ray", "resources": resources, **extra}


def group(name: str, pod: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"groupName": name, "rayStartParams": {}, "template": {"spec": pod}, **fields}


def worker_pod(**requests: Any) -> dict[str, Any]:
    return {"containers": [container("ray-worker", requests=requests)]}


def test_limit_stands_in_for_a_missing_request_per_resource() -> None:
    pod = {"containers": [container("w", requests={"cpu": "1"}, limits={"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": 1})]}
    req = rayjob_request(job(group("g", pod, replicas=1), submissionMode="HTTPMode"))
    assert req.pod_sets[1].per_pod == {CPU: 1000, MEMORY: 4 * Gi, GPU: 1000}


def test_containers_add_up_and_init_containers_take_the_max() -> None:
    pod = {
        "initContainers": [container("fetch", requests={"cpu": "4", "memory": "1Gi"})],
        "containers": [
            container("ray-worker", requests={"cpu": "1", "memory": "2Gi"}),
            container("log-shipper", requests={"cpu": "500m", "memory": "512Mi"}),
        ],
    }
    req = rayjob_request(job(group("g", pod, replicas=2), submissionMode="HTTPMode"))
    # containers: 1.5 CPU, 2.5Gi; init: 4 CPU, 1Gi -> per pod max per resource: 4 CPU, 2.5Gi
    assert req.pod_sets[1].per_pod == {CPU: 4000, MEMORY: 2 * Gi + 512 * Mi}
    assert req.pod_sets[1].count == 2


def test_sidecar_init_containers_add_to_the_pod_and_overhead_is_added() -> None:
    pod = {
        "initContainers": [
            container("proxy", requests={"cpu": "250m"}, restartPolicy="Always"),
            container("setup", requests={"cpu": "2"}),
        ],
        "containers": [container("ray-worker", requests={"cpu": "1"})],
        "overhead": {"cpu": "100m"},
    }
    req = rayjob_request(job(group("g", pod, replicas=1), submissionMode="HTTPMode"))
    # running: 1 + 0.25 sidecar = 1.25; setup runs beside the sidecar: 2 + 0.25 = 2.25; + 0.1 overhead
    assert req.pod_sets[1].per_pod == {CPU: 2350}


def test_replicas_clamped_like_kuberay_and_suspended_group_has_no_pods() -> None:
    req = rayjob_request(job(
        group("low", worker_pod(cpu="1"), replicas=0, minReplicas=2, maxReplicas=5),
        group("high", worker_pod(cpu="1"), replicas=9, minReplicas=0, maxReplicas=3),
        group("auto", worker_pod(cpu="1"), replicas=1, minReplicas=0, maxReplicas=100),
        group("off", worker_pod(cpu="1"), replicas=4, suspend=True),
        group("unset", worker_pod(cpu="1")),
        submissionMode="HTTPMode",
    ))
    counts = {p.name: p.count for p in req.pod_sets}
    assert counts == {"head": 1, "low": 2, "high": 3, "auto": 1, "off": 0, "unset": 0}
    assert req.pods == 7
    assert any("'low'" in n and "clamped to 2" in n for n in req.notes)
    assert any("'off'" in n and "suspended" in n for n in req.notes)


def test_min_above_max_replicas_is_rejected() -> None:
    with pytest.raises(RayJobRejected, match=r"worker group 'g'.*minReplicas 4 is above maxReplicas 2"):
        rayjob_request(job(group("g", worker_pod(cpu="1"), replicas=3, minReplicas=4, maxReplicas=2)))


def test_negative_quantity_names_group_container_and_field() -> None:
    with pytest.raises(RayJobRejected) as info:
        rayjob_request(job(group("gpu-workers", worker_pod(cpu="-1"), replicas=1)))
    message = info.value.message
    assert "worker group 'gpu-workers'" in message
    assert "container 'ray-worker'" in message
    assert "resources.requests.cpu" in message and "negative" in message


def test_malformed_quantity_names_group_container_and_field() -> None:
    manifest = job(group("gpu-workers", worker_pod(memory="lots"), replicas=1))
    with pytest.raises(RayJobRejected) as info:
        rayjob_request(manifest)
    message = info.value.message
    assert "(group 'gpu-workers')" in message and "(container 'ray-worker')" in message
    assert "resources.requests.memory: 'lots' is not a Kubernetes quantity" in message
    # without the CRD check, our own parser says the same thing in its words
    with pytest.raises(RayJobRejected) as raw:
        rayjob_request(manifest, validate=False)
    assert "worker group 'gpu-workers'" in raw.value.message and "container 'ray-worker'" in raw.value.message
    assert "resources.requests.memory" in raw.value.message


def test_request_above_limit_is_rejected() -> None:
    pod = {"containers": [container("w", requests={"cpu": "2"}, limits={"cpu": "1"})]}
    with pytest.raises(RayJobRejected, match=r"container 'w'.*requests.cpu is above its limit"):
        rayjob_request(job(group("g", pod, replicas=1)))


def test_float_quantity_fails_the_crd_with_a_hint_but_parses_without_it() -> None:
    manifest = job(group("g", worker_pod(cpu=0.5), replicas=1), submissionMode="HTTPMode")
    with pytest.raises(RayJobRejected, match=r"0.5 must be of type integer or string \(quote quantities"):
        rayjob_request(manifest)
    assert rayjob_request(manifest, validate=False).pod_sets[1].per_pod == {CPU: 500}


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda m: m.update(kind="RayCluster"), "kind is 'RayCluster', expected 'RayJob'"),
        (lambda m: m.update(apiVersion="ray.io/v1alpha1"), "apiVersion is 'ray.io/v1alpha1'"),
        (lambda m: m["spec"].pop("rayClusterSpec"), "spec.rayClusterSpec is required"),
        (lambda m: m["spec"].update(submissionMode="BatchMode"), "spec.submissionMode 'BatchMode' is not one of"),
        (lambda m: m["metadata"].pop("name"), "metadata.name (or metadata.generateName) is required"),
        (lambda m: m["spec"]["rayClusterSpec"].pop("headGroupSpec"), "headGroupSpec"),
        (lambda m: m["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"].update(containers=[]),
         "containers must list at least one container"),
        (lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"].append(
            group("g", worker_pod(cpu="1"), replicas="two")), "(group 'g').replicas: 'two' is not of type 'integer'"),
        (lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"].extend(
            [group("g", worker_pod(cpu="1")), group("g", worker_pod(cpu="1"))]), "worker group 'g' appears twice"),
    ],
)
def test_bad_manifests_are_rejected_clearly(change: Any, expected: str) -> None:
    manifest = job()
    change(manifest)
    with pytest.raises(RayJobRejected) as info:
        rayjob_request(manifest)
    assert expected in info.value.message


def test_labels_give_queue_and_priority_class() -> None:
    manifest = job()
    manifest["metadata"]["labels"] = {QUEUE_LABEL: "team-a-training", PRIORITY_LABEL: "high", "app": "x"}
    req = rayjob_request(manifest)
    assert (req.queue, req.priority_class, req.namespace) == ("team-a-training", "high", "team-a")
    assert req.labels["app"] == "x"
    assert req.entrypoint == "python -c 'print(1)'"


def test_examples_ship_with_the_requests_their_comments_state() -> None:
    root = Path(__file__).resolve().parents[1] / "examples"
    cpu = rayjob_request(load_rayjob_documents((root / "rayjob-cpu.yaml").read_text())[0])
    gpu = rayjob_request(load_rayjob_documents((root / "rayjob-gpu.yaml").read_text())[0])
    assert (cpu.pods, cpu.total) == (3, {CPU: 2500, MEMORY: 3 * Gi + 200 * Mi})
    assert (gpu.pods, gpu.total) == (6, {CPU: 18500, MEMORY: 72 * Gi + 200 * Mi, GPU: 4000})
    assert (gpu.queue, gpu.priority_class) == ("team-a-training", "1000")


# ------------------------------------------------------------------------------ loading documents


def test_load_keeps_rayjobs_and_skips_other_kinds() -> None:
    text = (SAMPLES / "ray-job.volcano-scheduler-queue.yaml").read_text()
    docs = load_rayjob_documents(text)
    assert [d["kind"] for d in docs] == ["RayJob"]  # the volcano Queue and the ConfigMap are skipped


def test_malformed_yaml_names_the_document() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\n---\nkind: RayJob\nspec: [unclosed\n"
    with pytest.raises(RayJobRejected, match=r"jobs.yaml \(document 1\): malformed YAML at line \d+"):
        load_rayjob_documents(text, "jobs.yaml")


def test_a_document_that_is_not_an_object_is_reported() -> None:
    with pytest.raises(RayJobRejected, match=r"\(document 1\): expected a Kubernetes object"):
        load_rayjob_documents("kind: RayJob\n---\n- a list\n", "x.yaml")
    with pytest.raises(RayJobRejected, match=r"\(document 0\): the object has no kind"):
        load_rayjob_documents("metadata: {name: x}\n", "x.yaml")


# ------------------------------------------------------------------------------ the CRD schema


def test_samples_pass_the_crd_schema() -> None:
    for name, doc in all_sample_jobs():
        assert crd_violations(doc) == [], name


def test_stored_schema_is_the_cut_of_the_real_crd() -> None:
    crd = yaml.load(KUBERAY_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    fresh = json.loads(json.dumps(rayjob_schema.pruned_schema_from_crd(crd)))
    assert fresh == stored_schema()


# ------------------------------------------------------------------------------ invariants

quantities = st.one_of(
    st.integers(min_value=0, max_value=64).map(str),
    st.integers(min_value=0, max_value=4000).map(lambda m: f"{m}m"),
    st.integers(min_value=0, max_value=512).map(lambda g: f"{g}Gi"),
)
resource_maps = st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "google.com/tpu"]), quantities,
                                max_size=4)
containers = st.builds(
    lambda i, r, lim: container(f"c{i}", requests=r, limits={k: v for k, v in lim.items() if k not in r}),
    st.integers(0, 99), resource_maps, resource_maps,
)
pods = st.builds(
    lambda cs, inits: {"containers": cs, **({"initContainers": inits} if inits else {})},
    st.lists(containers, min_size=1, max_size=3),
    st.lists(containers, max_size=2),
)
groups = st.builds(
    lambda i, pod, replicas, low, extra, hosts: group(
        f"g{i}", pod, replicas=replicas, minReplicas=low, maxReplicas=low + extra, numOfHosts=hosts
    ),
    st.integers(0, 10**6), pods, st.integers(0, 8), st.integers(0, 4), st.integers(0, 6), st.integers(1, 4),
)


@settings(max_examples=150, deadline=None)
@given(
    head=pods,
    workers=st.lists(groups, max_size=4, unique_by=lambda g: g["groupName"]),
    mode=st.sampled_from(["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]),
)
def test_total_is_the_sum_of_pod_sets(head: dict[str, Any], workers: list[dict[str, Any]], mode: str) -> None:
    manifest = job(*copy.deepcopy(workers), head=copy.deepcopy(head), submissionMode=mode)
    req = rayjob_request(manifest)
    expected: dict[str, int] = {}
    for pod_set in req.pod_sets:
        for r, v in pod_set.per_pod.items():
            expected[r] = expected.get(r, 0) + pod_set.count * v
    assert req.total == {r: v for r, v in expected.items() if v}
    assert req.pods == sum(p.count for p in req.pod_sets)
    # the gang: one head, each group clamp(replicas, min, max) x numOfHosts, a submitter only in K8sJobMode
    clamp = [min(max(g["replicas"], g["minReplicas"]), g["maxReplicas"]) * g["numOfHosts"] for g in workers]
    assert req.pods == 1 + sum(clamp) + (1 if mode == "K8sJobMode" else 0)
    # every pod asks at least what each of its containers asks
    for pod_set, spec in zip(req.pod_sets, [head, *workers], strict=False):
        pod_spec = spec if pod_set.role == "head" else spec["template"]["spec"]
        for c in pod_spec["containers"]:
            for r, v in {**c["resources"].get("limits", {}), **c["resources"].get("requests", {})}.items():
                assert pod_set.per_pod.get(r, 0) >= q(v)


# ------------------------------------------------------------------------------ expected duration


def test_expected_duration_from_the_annotation_else_the_deadline() -> None:
    job = sample("ray-job.kueue-toy-sample.yaml")
    assert rayjob_request(job).expected_duration is None
    job["spec"]["activeDeadlineSeconds"] = 600
    assert rayjob_request(job).expected_duration == 600.0
    job.setdefault("metadata", {})["annotations"] = {"rayqueue.io/expected-duration": "1h30m"}
    assert rayjob_request(job).expected_duration == 5400.0
    job["metadata"]["annotations"]["rayqueue.io/expected-duration"] = "soon"
    with pytest.raises(RayJobRejected, match=r"metadata.annotations.rayqueue.io/expected-duration: 'soon' is not a duration"):
        rayjob_request(job)
