"""Run benchmarks and rewrite BENCHMARKS.md: ``python -m bench [group ...]``."""

from __future__ import annotations

import argparse
import importlib
import inspect

from .common import write_report

GROUPS = ["local", "cluster"]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run gobucket_py benchmarks and rewrite BENCHMARKS.md from all results.")
    parser.add_argument("groups", nargs="*", choices=GROUPS, help="groups to run (default: all)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite BENCHMARKS.md from saved results without running")
    parser.add_argument("--soak", type=float, default=60.0, metavar="SECONDS",
                        help="cluster: seconds of continuous overflow fill+drain load while "
                             "counting false suspicions (issue #3 asks for 600)")
    args = parser.parse_args()
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
