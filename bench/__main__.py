"""Run benchmarks and rewrite BENCHMARKS.md: ``python -m bench [group ...]``."""

from __future__ import annotations

import argparse
import importlib

from .common import write_report

GROUPS = ["local"]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run gobucket_py benchmarks and rewrite BENCHMARKS.md from all results.")
    parser.add_argument("groups", nargs="*", choices=GROUPS, help="groups to run (default: all)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite BENCHMARKS.md from saved results without running")
    args = parser.parse_args()
    if not args.report_only:
        for g in args.groups or GROUPS:
            print(f"== {g}", flush=True)
            importlib.import_module(f"bench.{g}").main()
    write_report(GROUPS)


if __name__ == "__main__":
    main()
