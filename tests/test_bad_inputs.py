"""The bad-input corpus (tests/bad_inputs/): every hostile or wrong input is refused with one clear line.

Each ``tests/bad_inputs/<kind>/<name>.<ext>`` has a ``<name>.expect`` holding a substring of the error it
must get. One worker process (``tests/bad_inputs/runner.py``) feeds every case to the real CLI (or, for
``rayjob`` and ``serving``, to the parsing a front end runs before it queues), with its address space capped at 2 GiB: an
alias bomb that tried to expand would fail its case (MemoryError, or the worker killed) instead of the
machine. A case that runs past the runner's 30 s is reported hung. Per case, the test asserts: refused
(exit code not 0), no traceback, exactly one line, the expected text in it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "bad_inputs"
KINDS = ("tree", "rayjob", "policy", "scenario", "trace", "serving")
MEMORY_LIMIT = 2 * 2**30
WORKER_TIMEOUT_S = 240

sys.path.insert(0, str(CORPUS))
from generate import generate  # noqa: E402

generate()


def corpus_cases() -> list[str]:
    cases = []
    for kind in KINDS:
        for expect in sorted((CORPUS / kind).glob("*.expect")):
            inputs = [p for p in expect.parent.glob(expect.stem + ".*") if p.suffix != ".expect"]
            assert len(inputs) == 1, f"{expect}: expected exactly one input beside it, found {inputs}"
            cases.append(f"{kind}/{inputs[0].name}")
    return cases


CASES = corpus_cases()


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bad-inputs")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, str(CORPUS / "runner.py"), str(out), *CASES],
        capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, preexec_fn=_limit_memory, env=env,
    )
    found: dict[str, dict[str, Any]] = {}
    last_started = None
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        if "start" in record:
            last_started = record["start"]
        else:
            found[record["case"]] = record
    if last_started is not None and last_started not in found:
        found[last_started] = {
            "exit": None, "exception": "WorkerDied", "seconds": None,
            "output": f"the worker died (rc {proc.returncode}) on this case: {proc.stderr[-2000:]}",
        }
    return found


def test_the_corpus_holds_at_least_100_inputs_of_every_kind() -> None:
    assert len(CASES) >= 100
    for kind in KINDS:
        assert any(c.startswith(f"{kind}/") for c in CASES), f"no {kind} case"


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_with_one_clear_line(case: str, results: dict[str, dict[str, Any]]) -> None:
    assert case in results, f"{case} never ran (the worker died before it)"
    got = results[case]
    output: str = got["output"]
    expect = (CORPUS / case).with_suffix(".expect").read_text().strip()
    assert got["exception"] is None, f"{case}: {got['exception']}:\n{output}"
    assert "Traceback" not in output, output
    assert got["exit"] not in (0, None), f"{case} was accepted:\n{output}"
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"{case}: expected one line, got {len(lines)}:\n{output}"
    assert expect in lines[0], f"{case}: {expect!r} not in {lines[0]!r}"
