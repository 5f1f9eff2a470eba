"""Run benchmarks and rewrite BENCHMARKS.md: ``python -m bench [group ...]``."""

from __future__ import annotations

import argparse
import importlib
import inspect

from .common import write_report

GROUPS = ["local", "cluster", "compare", "versus", "replicas", "tls", "scale", "swim",
          "flood", "burst", "balance", "uvloop", "peers", "batching"]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run gobucket_py benchmarks and rewrite BENCHMARKS.md from all results.")
    # No argparse choices=: Python 3.11 rejects an empty nargs="*" list against them.
    parser.add_argument("groups", nargs="*", metavar="GROUP",
                        help=f"groups to run: {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite BENCHMARKS.md from saved results without running")
    parser.add_argument("--soak", type=float, default=600.0, metavar="SECONDS",
                        help="cluster: seconds of continuous overflow fill+drain load while "
                             "counting false suspicions (issue #3's target is for 600)")
    parser.add_argument("--only", choices=["throughput", "drain", "balance", "detection"],
                        help="cluster: run one part only, keeping the other parts' saved "
                             "figures")
    args = parser.parse_args()
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    if not args.report_only:
        for g in args.groups or GROUPS:
            print(f"== {g}", flush=True)
            run = importlib.import_module(f"bench.{g}").main
            if inspect.signature(run).parameters:
                run(args)
            else:
                run()
    write_report(GROUPS)


if __name__ == "__main__":
    main()
