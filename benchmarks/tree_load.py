"""How long a valid ElasticQuotaTree takes to load and validate, by size (the issue's 10 MB, 59k-leaf tree).

    .venv/bin/python benchmarks/tree_load.py [--leaves 1000,10000,59000] [--repeat 3]

Prints, per size: leaves, nodes, bytes, wall and CPU seconds (fastest of --repeat runs) and CPU
microseconds per leaf; that column stays flat when loading is linear (CPU time, because the shared VM's
wall clock varies with its neighbours). The trees are generated (``tree_text``), not stored.
"""

from __future__ import annotations

import argparse
import time

from rayqueue.quota.tree import QuotaTree

GROUP_SIZE = 250


def tree_text(leaves: int) -> str:
    """A valid tree: root, leaves // 250 groups, 250 leaves each with min, max and a namespace."""
    groups = max(1, -(-leaves // GROUP_SIZE))
    out = [
        "apiVersion: scheduling.sigs.k8s.io/v1beta1",
        "kind: ElasticQuotaTree",
        "metadata: {name: big}",
        "spec:",
        "  root:",
        "    name: root",
        f"    min: {{cpu: '{8 * leaves}', memory: {32 * leaves}Gi, nvidia.com/gpu: '{leaves}'}}",
        f"    max: {{cpu: '{16 * leaves}', memory: {64 * leaves}Gi, nvidia.com/gpu: '{2 * leaves}'}}",
        "    children:",
    ]
    made = 0
    for g in range(groups):
        size = min(GROUP_SIZE, leaves - made)
        out += [
            f"    - name: group-{g:04d}",
            f"      min: {{cpu: '{8 * size}', memory: {32 * size}Gi, nvidia.com/gpu: '{size}'}}",
            f"      max: {{cpu: '{16 * size}', memory: {64 * size}Gi, nvidia.com/gpu: '{2 * size}'}}",
            "      attributes: {weight: 2, queueingStrategy: BestEffortFIFO}",
            "      children:",
        ]
        for i in range(size):
            out += [
                f"      - name: team-{g:04d}-{i:03d}",
                "        min: {cpu: '8', memory: 32Gi, nvidia.com/gpu: '1'}",
                "        max: {cpu: '16', memory: 64Gi, nvidia.com/gpu: '2'}",
                f"        namespaces: [ns-{g:04d}-{i:03d}-a, ns-{g:04d}-{i:03d}-b]",
            ]
        made += size
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leaves", default="1000,10000,59000", help="comma-separated tree sizes in leaves")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the fastest is reported")
    args = parser.parse_args()
    print(f"{'leaves':>8} {'nodes':>8} {'bytes':>12} {'wall s':>8} {'cpu s':>8} {'cpu us/leaf':>12}")
    for leaves in (int(x) for x in args.leaves.split(",")):
        text = tree_text(leaves)
        wall = cpu = float("inf")
        for _ in range(args.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            tree = QuotaTree.from_yaml_text(text, f"tree-{leaves}.yaml")
            wall = min(wall, time.perf_counter() - start)
            cpu = min(cpu, time.process_time() - start_cpu)
        print(
            f"{leaves:>8,} {len(tree.nodes):>8,} {len(text.encode()):>12,} {wall:>8.2f} {cpu:>8.2f} "
            f"{cpu / leaves * 1e6:>12.1f}"
        )


if __name__ == "__main__":
    main()
