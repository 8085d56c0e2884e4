"""Dashboard pages with 100,000 finished jobs in the history: render time of each page, history alone.

    .venv/bin/python benchmarks/dashboard_render.py [--jobs 100000] [--repeat 5]

Seeds a SQLite store (as the standalone service writes it) with that many finished jobs over 20 teams and
30 days (a tenth preempted once), then times each page through the app in-process (no network): the
median and the worst of ``--repeat`` requests.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dashboard_seed import seed_bulk, seed_story  # noqa: E402

from rayqueue.scheduler.dashboard.pages import history_app  # noqa: E402
from rayqueue.scheduler.service.store import Store  # noqa: E402

PAGES = [
    ("quota tree", "/"),
    ("history, first page", "/history"),
    ("history, one team", "/history?team=team-07"),
    ("history, one team, 1 day, failed", "/history?team=team-07&since=2025-12-01&until=2025-12-02&outcome=Failed"),
    ("history, page 1000", "/history?page=1000"),
    ("history, name prefix", "/history?name=job-0999"),
    ("job page", "/jobs/job-050000"),
    ("job page (preempted)", "/jobs/train-a-1"),
    ("queues (history alone)", "/queues"),
]


async def measure(url: str, repeat: int) -> list[tuple[str, float, float, int]]:
    out = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=history_app(url)), base_url="http://b") as http:
        for name, path in PAGES:
            times = []
            size = 0
            for _ in range(repeat):
                started = time.perf_counter()
                resp = await http.get(path)
                times.append(time.perf_counter() - started)
                assert resp.status_code == 200, (path, resp.status_code, resp.text[:200])
                size = len(resp.content)
            out.append((name, statistics.median(times), max(times), size))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        store = Store(url)
        started = time.perf_counter()
        seed_bulk(store, args.jobs)
        seed_story(store)
        store.close()
        print(f"seeded {args.jobs:,} finished jobs (+3) with their events in {time.perf_counter() - started:.1f}s")
        print(f"{'page':40} {'median ms':>10} {'worst ms':>10} {'KiB':>8}")
        for name, median, worst, size in asyncio.run(measure(url, args.repeat)):
            print(f"{name:40} {median * 1000:10.1f} {worst * 1000:10.1f} {size / 1024:8.1f}")


if __name__ == "__main__":
    main()
