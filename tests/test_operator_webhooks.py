"""Admission webhooks served by kopf: suspend new RayJobs in managed namespaces, refuse bad trees."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from typing import Any

import aiohttp
import pytest
from operator_env import EVENTUALLY_S, TREES, environment, eventually, policy_manifest, rayjob, tree_manifest

from rayqueue.scheduler.operator.handlers import WebhookConfig
from rayqueue.scheduler.operator.rayjobs import MUTATED_ANNOTATION

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a hang guard; waits end at their event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def review(obj: dict[str, Any], group: str, version: str, plural: str, operation: str = "CREATE") -> dict:
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "req-1", "operation": operation, "dryRun": False,
            "kind": {"group": group, "version": version, "kind": obj.get("kind")},
            "resource": {"group": group, "version": version, "resource": plural},
            "userInfo": {"username": "alice"}, "object": obj,
            "namespace": obj["metadata"].get("namespace"), "name": obj["metadata"].get("name"),
        },
    }


async def post(port: int, path: str, body: dict) -> dict:
    """POST an AdmissionReview as the API server would (waiting for kopf to open the port)."""
    deadline = time.monotonic() + EVENTUALLY_S  # a hang guard: the loop ends once kopf listens
    while time.monotonic() < deadline:
        try:
            async with aiohttp.ClientSession() as s, \
                    s.post(f"http://127.0.0.1:{port}/{path}", json=body) as rsp:
                assert rsp.status == 200, await rsp.text()
                data: dict = await rsp.json()
                return data["response"]
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"the webhook server never listened on port {port}")


async def test_mutating_webhook_suspends_rayjobs_in_managed_namespaces_and_says_so() -> None:
    port = free_port()
    async with environment(runtime=30) as env:
        await env.create(TREES, tree_manifest({"team-a": ("2", "2")}, root_min="2", root_max="2"))
        await env.start_operator(webhook=WebhookConfig(port=port, addr="127.0.0.1", insecure=True))
        await eventually(lambda: env.operators[0].controller.tree is not None, what="tree loaded")
        # A KubeRay sample as users write it: no suspend, no shutdownAfterJobFinishes.
        job = rayjob("sample", "team-a", suspend=None, shutdown=None)
        response = await post(port, "suspend-rayjobs", review(job, "ray.io", "v1", "rayjobs"))
        assert response["allowed"] is True
        ops = json.loads(base64.b64decode(response["patch"]))
        patched = {op["path"]: op["value"] for op in ops}
        assert patched["/spec/suspend"] is True
        assert patched["/spec/shutdownAfterJobFinishes"] is True
        assert any("rayqueue set" in w for w in response.get("warnings", []))

        # Elsewhere (no leaf, no queue label) the webhook changes nothing.
        other = await post(port, "suspend-rayjobs",
                           review(rayjob("x", "elsewhere", suspend=None), "ray.io", "v1", "rayjobs"))
        assert other["allowed"] is True and not other.get("patch")

        # The API server would apply the patch; the operator then queues it and posts an event.
        job["spec"].update({"suspend": True, "shutdownAfterJobFinishes": True})
        job["metadata"]["annotations"][MUTATED_ANNOTATION] = "spec.shutdownAfterJobFinishes=true, spec.suspend=true"
        await env.create_job(job)
        mutated = await eventually(lambda: env.events("sample", "Mutated"), what="Mutated event")
        assert "shutdownAfterJobFinishes" in mutated[0]["message"]
        await eventually(lambda: env.running("team-a", "sample"), what="sample admitted")


async def test_validating_webhook_refuses_invalid_tree_and_policy_with_the_validator_messages() -> None:
    port = free_port()
    async with environment(runtime=30) as env:
        await env.start_operator(webhook=WebhookConfig(port=port, addr="127.0.0.1", insecure=True))
        good = tree_manifest({"team-a": ("2", "4")}, root_min="4", root_max="4")
        ok = await post(port, "validate-tree", review(good, "scheduling.sigs.k8s.io", "v1beta1",
                                                      "elasticquotatrees"))
        assert ok["allowed"] is True
        bad = tree_manifest({"team-a": ("6", "1"), "team-b": ("1", "1")}, root_min="4", root_max="4")
        refused = await post(port, "validate-tree", review(bad, "scheduling.sigs.k8s.io", "v1beta1",
                                                           "elasticquotatrees"))
        assert refused["allowed"] is False
        message = refused["status"]["message"]
        assert "team-a" in message and "min" in message

        policy = policy_manifest([{"resource": "ecs", "max": -1}])
        refused = await post(port, "validate-policy", review(policy, "scheduling.alibabacloud.com",
                                                             "v1alpha1", "resourcepolicies"))
        assert refused["allowed"] is False
        assert "units" in refused["status"]["message"]
