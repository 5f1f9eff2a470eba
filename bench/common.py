"""Shared helpers: result rows, medians, and the BENCHMARKS.md writer."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@dataclass
class Row:
    """One measured figure next to its target and the same-run baseline."""

    issue: str
    name: str
    value: float
    unit: str
    target: str
    met: bool
    baseline: str = ""
    ratio: str = ""
    note: str = ""


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def load(group: str) -> list[Row]:
    """The rows saved by the last run of ``group`` (none if it never ran)."""
    f = RESULTS / f"{group}.json"
    return [Row(**r) for r in json.loads(f.read_text())] if f.exists() else []


def save(group: str, rows: list[Row]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{group}.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    for r in rows:
        print(f"  {r.name}: {fmt(r.value)} {r.unit} (target {r.target}) "
              f"{'MET' if r.met else 'NOT MET'} {r.baseline} {r.ratio}", flush=True)


def fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def machine() -> str:
    return (f"{os.cpu_count()} cores, Python {platform.python_version()} "
            f"({platform.python_implementation()}), {platform.system()} {platform.release()}")


def _cell(text: str) -> str:
    """A Markdown table cell: no pipes or line breaks."""
    return " ".join(text.replace("|", "\\|").split())


def write_report(groups: list[str]) -> None:
    rows: list[dict[str, object]] = []
    for g in groups:
        f = RESULTS / f"{g}.json"
        if f.exists():
            rows.extend({**r, "how": f"`python -m bench {g}`"} for r in json.loads(f.read_text()))
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); do not edit by hand. Each figure is a",
        "median over repeated runs unless it says otherwise, next to its target and a baseline",
        "measured in the same run on the same machine (the machine is noisy: compare ratios).",
        "",
        f"Machine: {machine()}.",
        f"Command: `make bench` (or `.venv/bin/python -m bench {' '.join(groups)}`; "
        "`--soak SECONDS` sets the cluster soak, default 600; the whole run takes about "
        "half an hour).",
        "",
        "| issue | figure | value | target | met | baseline (same run) | ratio | reproduce "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        r = {k: _cell(v) if isinstance(v, str) else v for k, v in r.items()}
        lines.append(
            f"| {r['issue']} | {r['name']} | {fmt(float(r['value']))} {r['unit']} "  # type: ignore[arg-type]
            f"| {r['target']} | {'yes' if r['met'] else '**no**'} | {r['baseline']} "
            f"| {r['ratio']} | {r['how']} | {r['note']} |"
        )
    # Groups with more to say than table rows keep a section of their own,
    # bench/results/<group>.md, written by their run: appended in group order.
    for g in groups:
        section = RESULTS / f"{g}.md"
        if section.exists():
            lines += ["", section.read_text().rstrip("\n")]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {ROOT / 'BENCHMARKS.md'}", file=sys.stderr)
