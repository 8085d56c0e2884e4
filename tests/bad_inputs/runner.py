"""Feed bad inputs to rayqueue the way a user would, one process for many cases (see tests/test_bad_inputs.py).

    python tests/bad_inputs/runner.py OUT_DIR KIND/NAME.EXT ...

Each case runs the command its kind names (``KIND_COMMANDS``) through the real CLI app, or, for
``rayjob``, the submission parsing the standalone service runs before it queues anything. It prints one
JSON line as each case starts and one with its result, so that a case that kills the process (memory)
is named by the last "start" line. A case that runs past ``CASE_SECONDS`` is stopped and reported hung.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VALID = HERE / "valid"
CASE_SECONDS = 30


class Hung(BaseException):
    """Raised by the alarm: not an Exception, so no handler in rayqueue swallows it."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hung()


def kind_args(kind: str, path: Path, out: Path) -> list[str]:
    sim = ["--out", str(out), "--no-plots", "--no-progress"]
    parts = ["--quota", str(VALID / "tree.yaml"), "--cluster", str(VALID / "cluster.yaml")]
    if kind == "tree":
        return ["quota", "validate", str(path)]
    if kind == "policy":
        return ["simulate", *parts, "--trace", str(VALID / "trace.csv"), "--policy", str(path), *sim]
    if kind == "scenario":
        return ["simulate", str(path), *sim]
    if kind == "trace":
        return ["simulate", *parts, "--trace", str(path), "--strict", *sim]
    raise ValueError(kind)


def parse_submission(path: Path) -> None:
    """What the standalone service does with a submission before queueing (``Service.submit_text``)."""
    from rayqueue.quota.manifests import DocumentError, read_bytes
    from rayqueue.scheduler.service.rayjobs import check_runnable
    from rayqueue.scheduler.workloads.rayjob import KIND, RayJobRejected, load_submission_documents, rayjob_request

    try:
        data = read_bytes(path, path.name)
    except DocumentError as exc:
        raise RayJobRejected(str(exc)) from exc
    docs = load_submission_documents(data, path.name)
    if not docs:
        raise RayJobRejected(f"{path.name}: no RayJob document found")
    for index, doc in docs:
        if doc.get("kind") != KIND:
            raise RayJobRejected(f"{path.name} (document {index}): kind {doc.get('kind')!r} is not a RayJob")
        req = rayjob_request(doc)
        check_runnable(req, f"RayJob {req.name}")


def parse_serving(path: Path) -> None:
    """What a front end does with a RayService or RayCluster before it queues it."""
    from rayqueue.quota.manifests import DocumentError, read_bytes
    from rayqueue.scheduler.workloads.rayjob import RayJobRejected, load_submission_documents
    from rayqueue.scheduler.workloads.serving import RAYCLUSTER, RAYSERVICE, raycluster_request, rayservice_request

    try:
        data = read_bytes(path, path.name)
    except DocumentError as exc:
        raise RayJobRejected(str(exc)) from exc
    for index, doc in load_submission_documents(data, path.name):
        if doc.get("kind") == RAYSERVICE:
            rayservice_request(doc)
        elif doc.get("kind") == RAYCLUSTER:
            raycluster_request(doc)
        else:
            raise RayJobRejected(f"{path.name} (document {index}): kind {doc.get('kind')!r} is not a RayService or RayCluster")


def run_case(kind: str, path: Path, out: Path) -> dict[str, Any]:
    from typer.testing import CliRunner

    from rayqueue.scheduler.cli import app
    from rayqueue.scheduler.workloads.rayjob import RayJobRejected

    if kind in ("rayjob", "serving"):
        try:
            (parse_submission if kind == "rayjob" else parse_serving)(path)
        except RayJobRejected as exc:
            return {"exit": 1, "output": str(exc), "exception": None}
        except Exception as exc:  # noqa: BLE001 - reported as the failure it is
            return {"exit": 1, "output": traceback.format_exc(), "exception": type(exc).__name__}
        return {"exit": 0, "output": "accepted", "exception": None}
    result = CliRunner().invoke(app, kind_args(kind, path, out))
    exc = result.exception
    unexpected = exc is not None and not isinstance(exc, SystemExit)
    output = result.output
    if unexpected:
        output += "".join(traceback.format_exception(exc))
    return {"exit": result.exit_code, "output": output, "exception": type(exc).__name__ if unexpected else None}


def main() -> None:
    out = Path(sys.argv[1])
    signal.signal(signal.SIGALRM, _alarm)
    for case in sys.argv[2:]:
        kind = case.split("/", 1)[0]
        print(json.dumps({"start": case}), flush=True)
        start = time.perf_counter()
        signal.alarm(CASE_SECONDS)
        try:
            result = run_case(kind, HERE / case, out / case.replace("/", "_"))
        except Hung:
            result = {"exit": None, "output": f"hung: still running after {CASE_SECONDS} s", "exception": "Hung"}
        except MemoryError:
            result = {"exit": None, "output": "MemoryError", "exception": "MemoryError"}
        finally:
            signal.alarm(0)
        result.update(case=case, seconds=round(time.perf_counter() - start, 3))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
