"""The serving-burst scenario in the simulator: services with a request-rate series and an autoscaler,
run with the engine's reservations, a static split and no reservation (``simulations/serving.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayqueue.simulations.config import ConfigError, load_scenario
from rayqueue.simulations.report import summarize
from rayqueue.simulations.simulator import simulate_scenario

SCENARIO = Path(__file__).resolve().parent.parent / "simulations" / "scenarios" / "serving-burst"


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    out = {}
    for mode, name in (("reservation", "scenario.yaml"), ("static", "scenario-static.yaml"), ("none", "scenario-none.yaml")):
        sc = load_scenario(SCENARIO / name)
        assert sc.serving == mode
        out[mode] = summarize(simulate_scenario(sc))
    return out


def test_with_a_reservation_no_scale_up_waits_and_batch_borrowed_the_headroom(runs: dict[str, dict]) -> None:
    chat = runs["reservation"]["services"]["chat"]
    assert chat["peak_replicas_running"] == chat["peak_replicas_asked"] == 11
    assert chat["scale_up_wait_s"] == 0.0
    assert chat["batch_preemptions"] > 0  # the burst took back headroom lent to batch
    assert chat["headroom_lent_gpu_hours"] > 0


def test_without_a_reservation_the_burst_waits_for_batch(runs: dict[str, dict]) -> None:
    chat = runs["none"]["services"]["chat"]
    assert chat["scale_up_wait_s"] > 60
    assert chat["batch_preemptions"] == 0 and chat["headroom_lent_gpu_hours"] == 0


def test_a_static_split_serves_the_burst_but_batch_waits_longer_than_with_a_reservation(runs: dict[str, dict]) -> None:
    static, reserved = runs["static"], runs["reservation"]
    assert static["services"]["chat"]["scale_up_wait_s"] == 0.0
    assert static["services"]["chat"]["headroom_lent_gpu_hours"] == 0
    assert static["cluster"]["all_queues"]["wait_mean_s"] > 1.5 * reserved["cluster"]["all_queues"]["wait_mean_s"]
    assert static["cluster"]["makespan_s"] > reserved["cluster"]["makespan_s"]


def test_a_bad_service_trace_is_one_line_per_problem(tmp_path: Path) -> None:
    for name in ("tree.yaml", "cluster.yaml", "policy.yaml", "trace.csv"):
        (tmp_path / name).write_text((SCENARIO / name).read_text())
    (tmp_path / "services.yaml").write_text(
        "kind: ServiceTrace\nservices:\n- {name: chat, queue: serve, replica: {nvidia.com/gpu: 1}, minReplicas: 5,\n"
        "   maxReplicas: 2, perReplica: 10, load: [[0, 10], [-5, .nan]]}\n"
    )
    (tmp_path / "scenario.yaml").write_text((SCENARIO / "scenario.yaml").read_text())
    with pytest.raises(ConfigError) as err:
        load_scenario(tmp_path / "scenario.yaml")
    text = str(err.value)
    assert "services[0].load" in text and "must be finite" in text
