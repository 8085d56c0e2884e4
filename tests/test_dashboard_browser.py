"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against ``rayqueue serve``
running real jobs on its own local Ray cluster, then against ``rayqueue dashboard --db`` once the service
and its Ray cluster are gone.

What a person checks: the job that waits shows its position and reason, and the page follows it without
a reload (server-sent events); a preempted job's timeline shows the preemption and who caused it; a
finished job's logs are readable after the Ray cluster was stopped. With ``RAYQUEUE_SCREENSHOTS=DIR`` the
test saves a screenshot of each page there (docs/img holds the committed ones).

Chromium is required, not optional: without /usr/bin/chromium (``apt-get install chromium``; .ci/run
installs it) this test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standalone_env import HANG_GUARD_S, Gates, rayjob, tree, wait_http

from rayqueue.scheduler.service.raycluster import free_ports, head_processes
from rayqueue.scheduler.service.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: a browser waits this long for what a page should show (it shows it as soon as it is true)
PAGE_WAIT_MS = int(HANG_GUARD_S * 1000)


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "rayqueue.scheduler.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _until(check: Any, what: str) -> None:
    """Wait for an event (Playwright's sync API holds this thread's event loop, so no asyncio here)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {HANG_GUARD_S:.0f}s waiting for {what}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # a clean stop: serve also stops the Ray head it started
        try:
            proc.wait(HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.fixture
def browser() -> Iterator[Any]:
    assert CHROMIUM.exists(), ("the dashboard's browser test needs Debian's chromium at /usr/bin/chromium "
                               "(apt-get install -y chromium); it is required, not skipped")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _shot(page: Any, name: str) -> None:
    where = os.environ.get("RAYQUEUE_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=True)


def test_the_dashboard_follows_real_jobs_and_keeps_their_story_after_ray_is_gone(
    tmp_path: Path, browser: Any
) -> None:
    gates = Gates(tmp_path)
    port, post_mortem_port = free_ports(2)
    url = f"http://127.0.0.1:{port}"
    tree_file = tmp_path / "tree.yaml"
    # team-a may borrow team-b's idle GPU; team-b takes it back when it needs it (reclaim). No preemption
    # by priority inside a queue, so that team-a's third job waits instead of stopping its low one.
    tree_file.write_text(tree(("team-a", 1, 2), ("team-b", 1, 2), root_min=2, root_max=2, preemption="Never"))
    state = tmp_path / "state"
    log = tmp_path / "serve.log"
    proc = _start(["serve", "--tree", str(tree_file), "--num-gpus", "2", "--num-cpus", "4", "--port", str(port),
                   "--state-dir", str(state), "--poll-interval", "0.1"], log)
    ray_temp = None
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        wait_http(url, proc, log)

        def submit(name: str, namespace: str, priority: str) -> str:
            body = {"yaml": rayjob(name, gates.entrypoint(name), namespace=namespace, priority=priority)}
            resp = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
            assert resp.status_code == 201, resp.text
            return str(resp.json()["jobs"][0]["id"])

        def job(job_id: str) -> dict[str, Any]:
            out: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=60).json()
            return out

        def events(job_id: str) -> list[str]:
            return [e["kind"] for e in httpx.get(f"{url}/v1/history", params={"job": job_id}, timeout=60)
                    .json()["events"]]

        borrower = submit("borrower", "team-a", "low")
        steady = submit("steady", "team-a", "normal")
        _until(lambda: job(borrower)["state"] == job(steady)["state"] == "Running",
                               "team-a's two jobs to run")
        # the tree: team-a uses its guaranteed GPU and borrows team-b's idle one
        page.goto(f"{url}/")
        borrowed = page.locator('tr[data-node="team-a"][data-resource="nvidia.com/gpu"] td.borrowed')
        assert borrowed.inner_text().strip() == "1"
        _shot(page, "quota-tree")
        page.locator('a[href="/queues/team-a"]').click()  # a node links to its queue
        page.wait_for_url(f"{url}/queues/team-a")

        waiter = submit("waiter", "team-a", "normal")  # team-a is at its max: it waits
        taker = submit("taker", "team-b", "normal")  # within team-b's min: reclaims the borrowed GPU
        _until(lambda: "Requeued" in events(borrower), "the borrower to be preempted")
        ray_temp = json.loads(Store(f"sqlite:///{state / 'rayqueue.db'}").get_setting("local_ray") or "{}")["temp_dir"]

        # the queue: the waiting job with its position and reason, live
        page.goto(f"{url}/queues/team-a")
        row = page.locator(f'tr[data-job="{waiter}"]')
        row.wait_for(timeout=PAGE_WAIT_MS)
        assert row.locator("td.pos").inner_text().strip() in ("0", "1")
        reason = row.locator("td.reason").inner_text()
        assert "QuotaMaxExceeded" in reason and "would use" in reason, reason
        page.locator("#live-status", has_text="updated").wait_for(timeout=PAGE_WAIT_MS)  # rows came by SSE
        _shot(page, "queue")

        page.goto(f"{url}/jobs/{borrower}")
        timeline = page.locator("svg.timeline")
        assert timeline.locator(".phase-preempting").count() >= 1
        assert f"preempted for {taker}" in timeline.text_content()
        _shot(page, "job-preempted")

        # everything runs to its end; the queue page follows without a reload
        page.goto(f"{url}/queues/team-a")
        page.locator(f'tr[data-job="{waiter}"].state-pending').wait_for(timeout=PAGE_WAIT_MS)
        gates.open_all()
        page.locator(f'tr[data-job="{waiter}"].state-pending').wait_for(state="detached", timeout=PAGE_WAIT_MS)
        for job_id in (borrower, steady, waiter, taker):
            _until(lambda j=job_id: job(j)["state"] == "Succeeded", f"{job_id} to succeed")
    finally:
        gates.open_all()
        _stop(proc)
    assert ray_temp is not None and not head_processes(ray_temp), "the Ray cluster is gone"

    # post-mortem: the store alone, no service, no Ray
    pm_log = tmp_path / "dashboard.log"
    pm = _start(["dashboard", "--db", str(state / "rayqueue.db"), "--port", str(post_mortem_port)], pm_log)
    pm_url = f"http://127.0.0.1:{post_mortem_port}"
    try:
        wait_http(pm_url, pm, pm_log)
        page.goto(f"{pm_url}/jobs/{borrower}")
        logs = page.locator("details.logs")
        assert logs.count() == 2  # at the preemption, and at the end
        assert "Preempted" in logs.nth(0).locator("summary").inner_text()
        logs.nth(0).locator("summary").click()
        assert "started borrower" in logs.nth(0).locator("pre").inner_text()
        assert "finished borrower" in logs.nth(1).locator("pre").inner_text()
        assert f"preempted for {taker}" in page.locator("svg.timeline").text_content()
        _shot(page, "job-post-mortem")
        page.goto(f"{pm_url}/jobs/{waiter}")
        assert "QuotaMaxExceeded" in page.locator("table.waited").inner_text()
        page.goto(f"{pm_url}/history")
        assert page.locator("tr.state-succeeded").count() == 4
        _shot(page, "history")
    finally:
        _stop(pm)
