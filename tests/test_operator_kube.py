"""The operator's Kubernetes client as a pod runs it: in-cluster config over TLS, a service-account token
that rotates, 401s and 429s with ``Retry-After``, all against the kmock API server."""

from __future__ import annotations

import os
import time
from pathlib import Path

import kmock
import pytest
import yaml
from kmock_cluster import ADMIN_TOKEN, FakeApiServer, tls_files, tls_server
from operator_env import TREES, environment, eventually, node, rayjob, tree_manifest

from rayqueue.scheduler.operator.kube import NODES, ApiError, Connection, KubeClient, RetryPolicy, retry_after_seconds

pytestmark = [pytest.mark.timeout(90)]


def write_token(path: Path, token: str) -> None:
    """Replace the token file in one step, as kubelet swaps a projected volume's files."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(token)
    os.replace(tmp, path)


def service_account(tmp_path: Path, ca: Path, port: int, token: str) -> Connection:
    """The pod's view: KUBERNETES_SERVICE_HOST/PORT, the token file and the cluster's CA."""
    token_path = tmp_path / "token"
    write_token(token_path, token)
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    return Connection.in_cluster(token_path=str(token_path), ca_path=str(ca), environ=environ)


async def test_in_cluster_client_reloads_a_rotated_token_after_a_401_and_retries_once(tmp_path: Path) -> None:
    cert, key = tls_files(tmp_path)
    async with FakeApiServer(record=True) as server, tls_server(server, cert, key) as srv:
        server.tokens = {"token-1"}
        connection = service_account(tmp_path, cert, srv.port, "token-1")
        assert connection.server == f"https://127.0.0.1:{srv.port}"
        async with KubeClient(connection, retry=RetryPolicy(base_s=0.01)) as client:
            await client.create(NODES, None, node("n1", "4"))
            assert [s.token for s in server.seen] == ["token-1"]

            # kubelet rotates the token; the API server no longer accepts the old one
            write_token(tmp_path / "token", "token-2")
            server.tokens = {"token-2"}
            server.seen.clear()
            assert (await client.get(NODES, None, "n1"))["metadata"]["name"] == "n1"
            assert [(s.token, s.status) for s in server.seen] == [("token-1", 401), ("token-2", 200)]

            # A token the server refuses even after a reload: one reload, one retry, then the error.
            server.tokens = {"someone-else"}
            server.seen.clear()
            with pytest.raises(ApiError) as refused:
                await client.get(NODES, None, "n1")
            assert refused.value.status == 401
            assert [(s.token, s.status) for s in server.seen] == [("token-2", 401), ("token-2", 401)]


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_waited_for(status: int) -> None:
    async with FakeApiServer(record=True) as server, kmock.Server(server) as srv:
        # Our own backoff would retry after 10-20 ms; the server asks for a second.
        async with KubeClient(Connection(str(srv.url)), retry=RetryPolicy(base_s=0.02)) as client:
            await client.create(NODES, None, node("n1", "4"))
            server.seen.clear()
            server.inject("GET", "nodes", status=status, retry_after="1")
            assert (await client.get(NODES, None, "n1"))["metadata"]["name"] == "n1"
        assert [s.status for s in server.seen] == [status, 200]  # exactly one retry, no hammering
        assert server.seen[1].at - server.seen[0].at >= 0.95


def test_retry_after_header_is_parsed_defensively() -> None:
    assert retry_after_seconds("1") == 1.0
    assert retry_after_seconds("0") == 0.0
    assert retry_after_seconds("-5") == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("nan") is None and retry_after_seconds("inf") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    # A server asking for an hour does not hold a decision for an hour.
    assert RetryPolicy(max_retry_after_s=30).delay(0, retry_after_seconds("3600")) == 30


@pytest.mark.slow
async def test_operator_keeps_the_api_when_its_service_account_token_rotates(tmp_path: Path) -> None:
    async with environment(runtime=30, tls_dir=tmp_path) as env:
        env.server.record = True
        env.server.tokens = {"token-1"}
        srv = env.server.servers[0]
        connection = service_account(tmp_path, tmp_path / "apiserver.crt", srv.port, "token-1")
        await env.create(TREES, tree_manifest({"team-a": ("4", "4")}, root_min="4", root_max="4"))
        await env.start_operator(connection=connection)
        await env.create_job(rayjob("a", "team-a"))
        await eventually(lambda: env.running("team-a", "a"), what="a admitted with the first token")

        write_token(tmp_path / "token", "token-2")
        env.server.tokens = {"token-2"}
        rotated = time.monotonic()
        env.server.drop_watches()  # kopf's watches reconnect with the token they hold
        await env.create_job(rayjob("b", "team-a"))
        await eventually(lambda: env.running("team-a", "b"), timeout=30, what="b admitted after the rotation")
        await eventually(lambda: env.events("b", "Admitted"), what="b's Admitted event posted")

        after = [s for s in env.server.seen if s.at >= rotated]
        refused = [s for s in after if s.status == 401]
        # kopf's watches reconnected with the old token, were refused, and logged in again. (The operator's
        # own client shares the reloaded configuration, so it may never see a 401 itself.)
        assert any(s.agent.startswith("kopf") for s in refused), refused
        # Every request that got through after the rotation carried the new token (or is the test's own).
        stale = [(s.method, s.path, s.token, s.agent) for s in after
                 if s.status < 300 and s.token not in ("token-2", ADMIN_TOKEN)]
        assert not stale, stale


async def test_kubeconfig_token_file_is_read_again_after_a_401(tmp_path: Path) -> None:
    cert, key = tls_files(tmp_path)
    async with FakeApiServer(record=True) as server, tls_server(server, cert, key) as srv:
        server.tokens = {"token-1"}
        token_file = tmp_path / "user-token"
        write_token(token_file, "token-1")
        kubeconfig = tmp_path / "config"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "other",
            "clusters": [{"name": "kmock", "cluster": {"server": f"https://127.0.0.1:{srv.port}",
                                                        "certificate-authority": str(cert)}}],
            "users": [{"name": "dev", "user": {"tokenFile": str(token_file)}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "dev"}},
                         {"name": "other", "context": {"cluster": "nowhere", "user": "nobody"}}],
        }))
        connection = await Connection.from_kubeconfig(context="kmock", config_file=str(kubeconfig))
        async with KubeClient(connection) as client:
            await client.create(NODES, None, node("n1", "4"))
            write_token(token_file, "token-2")
            server.tokens = {"token-2"}
            server.seen.clear()
            assert [n["metadata"]["name"] for n in await client.list(NODES)] == ["n1"]
            assert [(s.token, s.status) for s in server.seen] == [("token-1", 401), ("token-2", 200)]


def test_explicit_server_and_token() -> None:
    conn = Connection("https://example:6443/", token="t", ca_path="/ca.crt")
    assert conn.server == "https://example:6443"
    assert conn.configuration.api_key["BearerToken"] == "Bearer t"
    assert conn.configuration.ssl_ca_cert == "/ca.crt"
    with pytest.raises(ValueError):
        Connection()
