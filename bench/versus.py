"""Cluster figures of this tree against an earlier commit, measured in one run.

``python -m bench versus`` (part of ``make bench``), or
``python -m bench.versus [--base REF] [--rounds N] [--parts throughput,drain]``,
checks ``REF`` out into a temporary git worktree, then alternates
``python -m bench cluster --only PART`` between that tree and this one,
``N`` rounds, and prints each figure's median in both trees and their ratio.
Alternating spreads the machine's drift over both sides. The result goes to
``bench/results/versus.json`` (shown in BENCHMARKS.md by ``python -m bench
--report-only``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import RESULTS, ROOT, Row, save

#: Rows compared, by name prefix, and whether higher is better.
FIGURES = {"overflow throughput": True, "cluster drain": False}


def run_part(tree: Path, part: str) -> dict[str, float]:
    """One ``--only part`` run in ``tree``: its rows' values by name."""
    # Nothing frozen on either side (see bench.cluster.FREEZE): the trees
    # compared with froze nothing.
    env = {**os.environ, "PYTHONPATH": str(tree), "GOBUCKET_BENCH_FREEZE": "0"}
    subprocess.run([sys.executable, "-m", "bench", "cluster", "--only", part], cwd=tree,
                   env=env, check=True, stdout=subprocess.DEVNULL)
    rows = json.loads((tree / "bench" / "results" / "cluster.json").read_text())
    prefix = {"throughput": "overflow throughput", "drain": "cluster drain"}.get(part, part)
    return {r["name"]: float(r["value"]) for r in rows if r["name"].startswith(prefix)}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__)
    parser.add_argument("--base", default="94ec05c", help="the baseline commit (default: "
                        "the last commit before the never-lies work)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="throughput,drain")
    parser.add_argument("--issue", default="#12",
                        help="the issue whose target this comparison checks (default #12; "
                             "#17 compares with 598ef51, the last commit before the "
                             "replicas..scale-out work)")
    return parser.parse_args(argv)


def main(_: object = None) -> None:
    args = parse([] if _ is not None else None)
    base = Path(tempfile.mkdtemp(prefix="gobucket-base-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    seen: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    try:
        for round_ in range(args.rounds):
            for part in args.parts.split(","):
                for side, tree in (("base", base), ("head", ROOT)):
                    print(f"round {round_ + 1} {part} {side}", flush=True)
                    for name, value in run_part(tree, part).items():
                        seen[side].setdefault(name, []).append(value)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT,
                       check=False)
    rows = []
    for name, values in seen["head"].items():
        before = seen["base"].get(name)
        if not before:
            continue
        head, was = statistics.median(values), statistics.median(before)
        higher = next(v for k, v in FIGURES.items() if name.startswith(k))
        ratio = head / was if was else float("nan")
        met = ratio >= 0.9 if higher else ratio <= 1.1
        print(f"{name}: head {head:.4g} base {was:.4g} ratio {ratio:.3f} "
              f"{'within 10%' if met else 'NOT within 10%'}")
        rows.append(Row(args.issue, f"{name}: this tree vs {args.base}", ratio, "x",
                        ">= 0.9x" if higher else "<= 1.1x", met, baseline=f"{was:.4g}",
                        ratio=f"{ratio:.2f}x",
                        note=f"medians of {len(values)} alternating runs: {head:.4g} now, "
                             f"{was:.4g} at {args.base}"))
    RESULTS.mkdir(exist_ok=True)
    # Comparisons with other baselines (other issues' targets) are kept.
    earlier = RESULTS / "versus.json"
    kept = [Row(**r) for r in json.loads(earlier.read_text())] if earlier.exists() else []
    kept = [r for r in kept if not r.name.endswith(f" vs {args.base}")]
    save("versus", kept + rows)


if __name__ == "__main__":
    main()
