"""``make demo``: three gobucket nodes as local processes, the backup-job demo
against them, then a clean shutdown (SIGTERM, exit 0, no stray processes).

    python -m examples.cluster.run_local [--jobs N] [--delay S] [--max-bucket N] [--hold S]

The cluster dashboard is node1's address in a browser (the URL is printed);
``--hold S`` keeps the nodes up S seconds after the demo to look at it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

from . import demo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nodes(ports: list[int], secret: str, max_bucket: int) -> list[subprocess.Popen[str]]:
    addrs = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    for i, port in enumerate(ports, start=1):
        env = {**os.environ, "GOBUCKET_SECRET": secret, "DEMO_MAX": str(max_bucket),
               "GOBUCKET_NODE_ID": f"node{i}"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gobucket_py", "--app", "examples.cluster.app:buckets",
             "--port", str(port), "--node-id", f"node{i}", "--peers", ",".join(addrs), "--fast",
             "--log-level", "WARNING"],
            env=env, stdout=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 20
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line or time.monotonic() > deadline:
            raise RuntimeError(f"a node did not start (exit code {proc.poll()})")
        print(line.strip())
    return procs


def stop_nodes(procs: list[subprocess.Popen[str]]) -> list[int | None]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=15))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m examples.cluster.run_local",
                                description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=260, help="backup jobs to fill")
    p.add_argument("--delay", type=float, default=4.0, help="seconds before a job fires")
    p.add_argument("--max-bucket", type=int, default=100, help="max_bucket of each node")
    p.add_argument("--hold", type=float, default=0.0,
                   help="seconds to keep the nodes up after the demo (to watch the dashboard)")
    args = p.parse_args()
    secret = secrets.token_hex(16)
    ports = [free_port() for _ in range(3)]
    procs = start_nodes(ports, secret, args.max_bucket)
    print(f"dashboard: http://127.0.0.1:{ports[0]}/  (node1's view of the cluster; "
          f"metrics at /metrics, JSON at /v1/status)", flush=True)
    try:
        time.sleep(0.5)  # the nodes exchange capacity within a few probe intervals
        demo_args = demo.parser().parse_args([
            "--node1", f"127.0.0.1:{ports[0]}",
            "--others", ",".join(f"127.0.0.1:{p}" for p in ports[1:]),
            "--secret", secret, "--jobs", str(args.jobs), "--delay", str(args.delay)])
        code = asyncio.run(demo.run(demo_args))
        if args.hold > 0:
            print(f"holding the cluster for {args.hold:g} s (Ctrl-C to stop early)", flush=True)
            try:
                time.sleep(args.hold)
            except KeyboardInterrupt:
                pass
    finally:
        codes = stop_nodes(procs)
    print(f"nodes stopped with exit codes {codes}")
    if any(c != 0 for c in codes):
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
