"""The corpus's big inputs, made on demand instead of committed (alias bombs, deep nesting, large files).

    python tests/bad_inputs/generate.py            # writes them beside the small ones, as gen-*.{yaml,csv}

Each generated input gets its ``.expect`` like every other case; the generated files are git-ignored.
``tests/test_bad_inputs.py`` calls :func:`generate` before it runs the corpus.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
TREE_HEAD = "apiVersion: scheduling.sigs.k8s.io/v1beta1\nkind: ElasticQuotaTree\nmetadata: {name: gen}\nspec:\n"
POLICY_HEAD = "apiVersion: scheduling.alibabacloud.com/v1alpha1\nkind: ResourcePolicy\nmetadata: {name: gen}\n"
JOB_HEAD = "apiVersion: ray.io/v1\nkind: RayJob\nmetadata: {name: gen, namespace: team-a}\n"


def billion_laughs(levels: int = 10, width: int = 10) -> str:
    """``a: &a [lol x width]``, then each level a list of ``width`` aliases of the one before."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def deep_tree(levels: int) -> str:
    """A quota tree ``levels`` nodes deep, each the only child of the one above (block style)."""
    out = [TREE_HEAD, "  root:\n    name: n0\n"]
    indent = "    "
    for i in range(1, levels):
        out.append(f"{indent}children:\n{indent}- name: n{i}\n")
        indent += "  "
    return "".join(out)


def deep_tree_flow(levels: int) -> str:
    """The same in flow style: ``{name: n0, children: [{name: n1, children: [...]}]}``."""
    body = "".join(f"{{name: n{i}, children: [" for i in range(levels)) + "]}" * levels
    return TREE_HEAD + f"  root: {body}\n"


def alias_deep(levels: int = 60) -> str:
    """Each half of the nesting is within the limit; the alias puts one inside the other."""
    inner = "[" * levels + "]" * levels
    return TREE_HEAD + f"  x: &deep {inner}\n  root: {{name: r, attributes: {{a: {'[' * levels}*deep{']' * levels}}}}}\n"


def big_tree(megabytes: int = 33) -> str:
    """A tree file just over the size limit (32 MiB): a valid start and a long comment."""
    filler = ("# " + "x" * 1000 + "\n") * (megabytes * 1024)
    return TREE_HEAD + "  root: {name: r}\n" + filler


def wide_trace(rows: int = 200_000) -> str:
    """A trace whose last row asks for gpu=nan: --strict must name it, however long the file."""
    body = "".join(f"{i},60,team-a,1\n" for i in range(rows))
    return "submit,duration,queue,gpu\n" + body + f"{rows},60,team-a,nan\n"


#: name -> (builder, expected text of the one-line error)
CASES: dict[str, tuple[Callable[[], str], str]] = {
    "tree/gen-billion-laughs.yaml": (
        lambda: TREE_HEAD + "  root: {name: r}\n" + billion_laughs(), "aliases expand to more than"
    ),
    "tree/gen-billion-laughs-in-spec.yaml": (
        lambda: TREE_HEAD + "  root:\n    name: r\n    attributes:\n"
        + "".join("      " + x + "\n" for x in billion_laughs().splitlines()),
        "(the limit; a YAML alias bomb?)",
    ),
    "tree/gen-deep-500.yaml": (lambda: deep_tree(500), "nested deeper than 100 levels"),
    "tree/gen-deep-3000.yaml": (lambda: deep_tree(3000), "nested deeper than 100 levels"),
    "tree/gen-deep-3000-flow.yaml": (lambda: deep_tree_flow(3000), "nested deeper than 100 levels"),
    "tree/gen-height-40.yaml": (lambda: deep_tree(40), "the tree is deeper than 32 levels"),
    "tree/gen-brackets-20000.yaml": (lambda: "[" * 20_000 + "]" * 20_000 + "\n", "nested deeper than 100 levels"),
    "tree/gen-braces-20000.yaml": (lambda: "{a: " * 20_000 + "1" + "}" * 20_000 + "\n", "nested deeper than 100 levels"),
    "tree/gen-alias-deeper-than-limit.yaml": (alias_deep, "once its aliases are expanded"),
    "tree/gen-33-megabytes.yaml": (big_tree, "larger than the limit of 33,554,432 bytes"),
    "policy/gen-billion-laughs.yaml": (
        lambda: POLICY_HEAD + "spec:\n  units: [{resource: ecs}]\n" + billion_laughs(), "aliases expand to more than"
    ),
    "policy/gen-deep.yaml": (
        lambda: POLICY_HEAD + "spec:\n  units: [{resource: ecs, x: " + "[" * 5000 + "]" * 5000 + "}]\n",
        "nested deeper than 100 levels",
    ),
    "scenario/gen-billion-laughs.yaml": (
        lambda: "kind: SimulationScenario\nquota: ../valid/tree.yaml\n" + billion_laughs(), "aliases expand to more than"
    ),
    "scenario/gen-deep.yaml": (lambda: "kind: SimulationScenario\nx: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper"),
    "rayjob/gen-billion-laughs.yaml": (lambda: JOB_HEAD + billion_laughs(), "aliases expand to more than"),
    "rayjob/gen-deep.yaml": (lambda: JOB_HEAD + "spec: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested deeper than 100"),
    "rayjob/gen-runtime-env-bomb.yaml": (
        lambda: (HERE / "valid" / "rayjob.yaml").read_text()
        + "  runtimeEnvYAML: |\n" + "".join("    " + x + "\n" for x in billion_laughs().splitlines()),
        "spec.runtimeEnvYAML",
    ),
    "trace/gen-nan-in-the-last-of-200k-rows.csv": (wide_trace, "row 200001"),
}


def generate(root: Path = HERE) -> list[str]:
    """Write every generated case (input and ``.expect``) under ``root``; returns their names."""
    for name, (build, expect) in CASES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        expect_path = path.with_suffix(".expect")
        if not path.exists() or not expect_path.exists() or expect_path.read_text().strip() != expect:
            path.write_text(build())
            expect_path.write_text(expect + "\n")
    return list(CASES)


if __name__ == "__main__":
    for name in generate():
        print(name)
