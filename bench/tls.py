"""Issue 15 figures: what mutual TLS between peers costs.

``python -m bench tls``. An in-process node whose bucket is full overflows
100,000 time-bombs (``fill_many`` of 20,000, and 5,000 concurrent ``fill``) to
a ``gobucket-node`` subprocess over loopback, then drains 2,000 of them one by
one; once over plain HTTP and once over mutual TLS (certificates from a CA
made here with the ``openssl`` command), in the same run. Both use HMAC
signing. Reported: TLS throughput and drain p99 next to plain HTTP's.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from gobucket_py import BucketConfig, GroupConfig, TaskBucket, TaskBucketGroup, TLSConfig

from .cluster import (
    BOMB,
    MANY_WIDTH,
    Node,
    Noop,
    alive_with_room,
    stop_quietly,
    tally,
    timed_fill,
    wait_for,
)
from .common import Row, median, percentile, save

N = 100_000
DRAINS = 2_000
SECRET = "bench-tls-secret"


def _openssl(dir: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=dir, check=True, capture_output=True)


def make_pki(dir: Path) -> dict[str, TLSConfig]:
    """A CA and a certificate for 127.0.0.1 for each of ``peer`` and ``origin``."""
    _openssl(dir, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=bench-ca")
    out = {}
    for name in ("peer", "origin"):
        (dir / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl(dir, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={name}")
        _openssl(dir, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey",
                 "ca.key", "-CAcreateserial", "-days", "1", "-out", f"{name}.pem",
                 "-extfile", f"{name}.ext")
        out[name] = TLSConfig(str(dir / f"{name}.pem"), str(dir / f"{name}.key"),
                              str(dir / "ca.pem"))
    return out


async def one_round(logdir: Path, tls: dict[str, TLSConfig] | None, pattern: str, tag: str
                    ) -> tuple[float, float]:
    """(overflow tasks/s, drain p99 ms) with or without TLS."""
    extra = ["--secret", SECRET]
    if tls is not None:
        peer_tls = tls["peer"]
        extra += ["--tls-cert", peer_tls.cert, "--tls-key", peer_tls.key,
                  "--tls-ca", str(peer_tls.ca)]
    peer = Node("peer", logdir, fast=False, max_bucket=N + DRAINS + 10, extra=extra)
    try:
        await peer.start()
        bucket = TaskBucket(BucketConfig(life_span=600, run_after=300, max_bucket=1), Noop(),
                            name="jobs")
        bucket.fill_nowait(BOMB, "occupant")  # full: every fill overflows to the peer
        group = TaskBucketGroup({"jobs": bucket}, [peer.addr], port=0, node_id="origin",
                                secret=SECRET, config=GroupConfig(),
                                tls=None if tls is None else tls["origin"])
        await group.start()
        try:
            await wait_for(lambda: alive_with_room(group, ["peer"]), 20, "the peer")
            ids = [f"{tag}-{i}" for i in range(N)]
            width = MANY_WIDTH if pattern == "fill_many" else 5_000
            rate, out = await timed_fill(group, ids, pattern, width)
            forwarded, _, errors = tally(out)
            if forwarded != N:
                raise RuntimeError(f"{tag}: {forwarded}/{N} forwarded, errors {dict(errors)}")
            took = []
            for task_id in ids[:DRAINS]:
                t0 = time.perf_counter()
                result = await group.drain("jobs", task_id)
                took.append(time.perf_counter() - t0)
                assert result.outcome.value == "drained", result
            return rate, percentile(took, 99) * 1000
        finally:
            await stop_quietly(group)
    finally:
        await peer.kill_and_wait()


async def run() -> list[Row]:
    if shutil.which("openssl") is None:
        raise RuntimeError("bench tls needs the openssl command (apt-get install openssl)")
    logdir = Path(tempfile.mkdtemp(prefix="gobucket-bench-tls-"))
    pki = make_pki(logdir)
    rows: list[Row] = []
    drains: dict[str, list[float]] = {"plain": [], "tls": []}
    for pattern in ("fill_many", "chunks"):
        rates: dict[str, list[float]] = {"plain": [], "tls": []}
        for round_ in range(3):
            for mode in ("plain", "tls"):
                rate, p99 = await one_round(logdir, pki if mode == "tls" else None, pattern,
                                            f"{mode}-{pattern}-{round_}")
                rates[mode].append(rate)
                drains[mode].append(p99)
            print(f"    {pattern} round {round_}: plain {rates['plain'][-1]:,.0f}/s, "
                  f"mTLS {rates['tls'][-1]:,.0f}/s", flush=True)
        plain, tls = median(rates["plain"]), median(rates["tls"])
        rows.append(Row("#15", f"overflow throughput over mutual TLS, 2 nodes ({N:,} "
                               f"time-bombs, {pattern})", tls, "tasks/s",
                        "reported next to plain HTTP", True, baseline=f"plain {plain:,.0f}/s",
                        ratio=f"{tls / plain:.2f}x",
                        note=f"runs plain {', '.join(f'{x / 1e3:.0f}k' for x in rates['plain'])}"
                             f"; mTLS {', '.join(f'{x / 1e3:.0f}k' for x in rates['tls'])}"))
    plain_d, tls_d = median(drains["plain"]), median(drains["tls"])
    rows.append(Row("#15", f"drain p99 over mutual TLS ({DRAINS:,} sequential drains of "
                           "forwarded time-bombs; median of 6 runs)", tls_d, "ms",
                    "reported next to plain HTTP", True, baseline=f"plain {plain_d:.3f} ms",
                    ratio=f"{tls_d / max(plain_d, 1e-9):.2f}x"))
    return rows


def main() -> None:
    save("tls", asyncio.run(run()))


if __name__ == "__main__":
    main()
