"""The repository stands alone and its dependencies are declared where the code needs them.

- every third-party module the code imports comes from a distribution pyproject.toml declares;
- `pip install rayqueue` (the core) runs the engine, the CLI and the simulator, and a command that needs
  an extra says in one line which one; each front end imports with only its own extra
  (tests/only_extras.py refuses every other installed distribution: a venv per extra would take minutes,
  and even one with the core only takes 1.5 minutes and the package registry here);
- nothing tracked reads a folder beside the repository: what the project reads is vendored under data/.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["quota", "queue", "scheduler", "simulations", "crds", "benchmarks", "tests"]
ONLY_EXTRAS = ROOT / "tests" / "only_extras.py"
SPILLOVER = ROOT / "simulations" / "scenarios" / "spillover" / "scenario.yaml"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def requirement_name(text: str) -> str:
    return normalize(re.split(r"[\s\[<>=!~;]", text.strip(), maxsplit=1)[0])


# ------------------------------------------------------------------------------ declared imports


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files that import it, for every module neither ours nor the stdlib's."""
    local = {p.stem for folder in ("tests", "tests/bad_inputs", "benchmarks") for p in (ROOT / folder).glob("*.py")}
    found: dict[str, set[str]] = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top in sys.stdlib_module_names or top in local or top in ("rayqueue", "__future__"):
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_comes_from_a_declared_distribution() -> None:
    project = pyproject()["project"]
    declared = {requirement_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        declared |= {requirement_name(r) for r in reqs}
    providers = md.packages_distributions()
    imports = third_party_imports()
    assert {"yaml", "ray", "kopf", "numpy"} <= set(imports)  # the scan sees the code
    problems = []
    for module, files in sorted(imports.items()):
        dists = {normalize(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) is installed by no distribution")
        elif not dists & declared:
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) comes from {', '.join(sorted(dists))}, "
                            "which pyproject.toml does not declare")
    assert problems == []


# ------------------------------------------------------------------------------ one extra at a time


def only(extras: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``tests/only_extras.py EXTRAS ARGS`` (the core dependencies plus ``extras`` importable)."""
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, str(ONLY_EXTRAS), extras, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def test_the_blocker_refuses_what_an_extra_brings() -> None:
    # The tests below are only as good as this: with the core alone, ray, kopf and matplotlib are absent.
    code = ("import importlib\n"
            "for m in ('ray', 'kopf', 'matplotlib', 'sqlmodel', 'fastapi', 'kubernetes_asyncio'):\n"
            "    try:\n"
            "        importlib.import_module(m)\n"
            "    except ModuleNotFoundError:\n"
            "        print('refused', m)\n")
    result = only("", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == [f"refused {m}" for m in
                                              ("ray", "kopf", "matplotlib", "sqlmodel", "fastapi", "kubernetes_asyncio")]


def test_the_core_install_runs_the_engine_the_cli_and_the_simulator(tmp_path: Path) -> None:
    imports = only("", "-c", "import rayqueue.scheduler.engine, rayqueue.simulations.simulator, "
                   "rayqueue.simulations.report, rayqueue.scheduler.engine.forecast, rayqueue.scheduler.cli.quota, "
                   "rayqueue.scheduler.service.cli, rayqueue.scheduler.operator.cli")
    assert imports.returncode == 0, imports.stderr
    helped = only("", "-m", "rayqueue", "--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("simulate", "serve", "submit", "status", "operator", "quota"):
        assert command in helped.stdout
    validated = only("", "-m", "rayqueue", "quota", "validate", "examples/tree.yaml")
    assert validated.returncode == 0, validated.stderr
    assert "OK examples/tree.yaml" in validated.stdout
    simulated = only("", "-m", "rayqueue", "simulate", str(SPILLOVER), "--no-plots", "--no-progress",
                     "--out", str(tmp_path))
    assert simulated.returncode == 0, simulated.stderr
    assert (tmp_path / "summary.json").is_file() and not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("args,extra", [
    (["serve"], "ray"),
    (["demo"], "ray"),
    (["operator"], "operator"),
    (["simulate", str(SPILLOVER), "--no-progress"], "report"),
])
def test_a_command_without_its_extra_says_which_to_install(tmp_path: Path, args: list[str], extra: str) -> None:
    result = only("", "-m", "rayqueue", *args, "--out", str(tmp_path)) if args[0] == "simulate" \
        else only("", "-m", "rayqueue", *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith(f"rayqueue {args[0]} ")
    assert f"needs the [{extra}] extra" in lines[0]
    assert lines[0].endswith(f"pip install 'rayqueue[{extra}]'")
    assert list(tmp_path.iterdir()) == []  # refused before any work


SERVICE_MODULES = ["admission", "api", "capacity", "cli", "core", "dashboard", "demo", "intake", "metrics", "queries",
                   "raycluster", "rayjobs", "recovery", "release", "server", "serving", "state", "store", "tables",
                   "tree_changes"]
OPERATOR_MODULES = ["cli", "controller", "handlers", "kube", "metrics", "rayjobs"]


@pytest.mark.parametrize("extra,code,command", [
    ("ray", "import ray.job_submission\n" + "\n".join(f"import rayqueue.scheduler.service.{m}" for m in SERVICE_MODULES),
     ["serve", "--help"]),
    ("operator", "import kopf, kubernetes_asyncio\n" + "\n".join(f"import rayqueue.scheduler.operator.{m}"
                                                        for m in OPERATOR_MODULES),
     ["operator", "--help"]),
])
def test_each_front_end_imports_with_only_its_extra(extra: str, code: str, command: list[str]) -> None:
    imported = only(extra, "-c", code)
    assert imported.returncode == 0, imported.stderr
    helped = only(extra, "-m", "rayqueue", *command)
    assert helped.returncode == 0, helped.stderr
    assert "Usage" in helped.stdout


def test_the_report_extra_draws_the_plots(tmp_path: Path) -> None:
    result = only("report", "-m", "rayqueue", "simulate", str(SPILLOVER), "--no-progress", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.html").stat().st_size > 10_000 and list(tmp_path.glob("*.png"))


# ------------------------------------------------------------------------------ the data is ours


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f]


def test_nothing_reads_a_folder_beside_the_repository() -> None:
    # The data came from a sibling folder of the checkout; a clone of the repository alone has nothing beside it.
    sibling = "sha" + "red"  # spelled in two parts so that this file does not name the path it looks for
    reference = re.compile(rf"\.\./{sibling}|{sibling}/data|[\"']{sibling}[\"']\s*/|/\s*[\"']{sibling}[\"']")
    offenders = []
    for name in tracked_files():
        path = ROOT / name
        if (name.startswith("data/") and name != "data/README.md") or name == "tests/test_packaging.py":
            continue  # third-party files, copied unchanged; this file names what it looks for
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        offenders += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                      if reference.search(line)]
    assert offenders == []


def test_the_vendored_data_names_its_sources_and_licences() -> None:
    readme = (ROOT / "data" / "README.md").read_text()
    files = [f for f in tracked_files() if f.startswith("data/") and f not in ("data/README.md", "data/kuberay/LICENSE")]
    folders = {str(Path(f).parent) + "/" for f in files}
    for folder in folders:  # every folder of data is described, with a version and a licence
        assert folder.removeprefix("data/") in readme, folder
    assert "Apache-2.0" in readme and "CC BY 4.0" in readme and "feeaf72f" in readme
    assert "Apache License" in (ROOT / "data" / "kuberay" / "LICENSE").read_text()
    assert len([f for f in files if f.startswith("data/kuberay/samples/")]) == 24
    assert len([f for f in files if f.startswith("data/kuberay/serving-samples/")]) == 57


def test_the_package_carries_the_philly_trace_where_its_scenario_looks() -> None:
    # Installed, the folders are mapped by package-dir; the scenario's relative trace path must land on a
    # file that package-data ships, at the same relative place as in the repository.
    tool = pyproject()["tool"]["setuptools"]
    installed = {folder: package.replace(".", "/") for package, folder in tool["package-dir"].items()}

    def install_path(repo_path: Path) -> tuple[str, str]:
        rel = repo_path.relative_to(ROOT)
        package = next(p for f, p in installed.items() if rel.parts[0] == f)
        return package, str(Path(package, *rel.parts[1:]))

    for scenario in sorted((ROOT / "simulations" / "scenarios" / "philly").glob("scenario*.yaml")):
        import yaml

        trace = yaml.safe_load(scenario.read_text())["trace"]
        target = (scenario.parent / trace).resolve()
        assert target.is_file(), trace
        _, scenario_installed = install_path(scenario)
        package, trace_installed = install_path(target)
        assert os.path.normpath(os.path.join(os.path.dirname(scenario_installed), trace)) == trace_installed
        shipped = tool["package-data"][package.replace("/", ".")]
        rel = str(target.relative_to(ROOT / target.relative_to(ROOT).parts[0]))
        assert any(fnmatch.fnmatch(rel, pattern) for pattern in shipped), (rel, shipped)
