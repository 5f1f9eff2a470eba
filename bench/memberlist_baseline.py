"""Baseline: HashiCorp memberlist (SWIM + Lifeguard, LAN config) on loopback.

Builds bench/memberlist/main.go offline in GOPATH mode against Debian's packages
(golang-go, golang-github-hashicorp-memberlist-dev and the -dev packages it pulls in),
starts N nodes on 127.0.0.1, and measures:

- idle cost over a window after a warm-up: UDP datagrams + TCP streams sent, bytes sent, and CPU
  (utime+stime from /proc/<pid>/stat), per node per second;
- kill -9 of one node: for each survivor, the time from the kill until memberlist's
  NotifyLeave fires for it (it fires when a node is declared dead);
- SIGSTOP of one node: the same, then SIGCONT and wait until it is back in every view.

When Go or the memberlist sources are missing, or the build fails, it prints
"skipped: <why>" and exits 0 (and writes {"skipped": "<why>"} to --json).
It installs nothing unless given --install. Stdlib only.

    python3 bench/memberlist_baseline.py --json bench/results/memberlist.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GO_SRC = HERE / "memberlist" / "main.go"
APT_PACKAGES = ["golang-go", "golang-github-hashicorp-memberlist-dev"]
DEFAULT_GOPATH = "/usr/share/gocode"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Skip(Exception):
    """The baseline cannot run here; the message says why."""


# --------------------------------------------------------------------------- build


def find_go() -> str | None:
    for cand in (shutil.which("go"), "/usr/lib/go/bin/go"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def apt_install() -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", *APT_PACKAGES]
    print("+", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise Skip(f"apt-get install failed: {' | '.join(tail)}")


def package_version(pkg: str) -> str:
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def build(workdir: Path, gopath: str, install: bool) -> tuple[Path, dict[str, str]]:
    """Build the node binary offline; raise Skip with the reason when impossible."""
    if install:
        apt_install()
    go = find_go()
    if go is None:
        raise Skip("go not found (Debian package golang-go is not installed; "
                   "rerun with --install or apt-get install -y " + " ".join(APT_PACKAGES) + ")")
    src = Path(gopath) / "src" / "github.com" / "hashicorp" / "memberlist"
    if not (src / "memberlist.go").is_file():
        raise Skip(f"memberlist sources not found under {src} (Debian package "
                   "golang-github-hashicorp-memberlist-dev is not installed; rerun with --install)")
    out = workdir / "mlnode"
    env = dict(os.environ, GO111MODULE="off", GOPATH=gopath, GOPROXY="off", GOFLAGS="",
               GOCACHE=str(workdir / "gocache"), CGO_ENABLED="0")
    r = subprocess.run([go, "build", "-o", str(out), str(GO_SRC)], env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise Skip("go build failed: " + " | ".join(r.stderr.strip().splitlines()[-5:]))
    gov = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
    info = {
        "go": gov,
        "golang-go": package_version("golang-go"),
        "memberlist_deb": package_version("golang-github-hashicorp-memberlist-dev"),
        "gopath": gopath,
        "build": "GO111MODULE=off GOPROXY=off GOPATH=" + gopath,
    }
    return out, info


# --------------------------------------------------------------------------- nodes


@dataclass
class Node:
    name: str
    port: int
    proc: subprocess.Popen[str]
    members: set[str] = field(default_factory=set)
    events: list[tuple[int, str, str]] = field(default_factory=list)  # (ns, kind, name)
    stats: list[dict[str, int]] = field(default_factory=list)
    ready: bool = False
    alive: bool = True

    @property
    def pid(self) -> int:
        return self.proc.pid


class Cluster:
    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.nodes: list[Node] = []
        self.live: list[Node] = []  # the nodes meant to be running now
        self.cond = threading.Condition()

    # process management ------------------------------------------------------
    def start(self, name: str, port: int, seeds: list[int]) -> Node:
        cmd = [str(self.binary), "-name", name, "-bind", "127.0.0.1", "-port", str(port),
               "-log", str(self.workdir / f"{name}.log")]
        if seeds:
            cmd += ["-join", ",".join(f"127.0.0.1:{p}" for p in seeds)]
        with open(self.workdir / f"{name}.err", "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                    bufsize=1)
        node = Node(name, port, proc)
        with self.cond:
            self.nodes.append(node)
        threading.Thread(target=self._reader, args=(node,), daemon=True).start()
        return node

    def _reader(self, node: Node) -> None:
        assert node.proc.stdout is not None
        for line in node.proc.stdout:
            parts = line.split()
            if not parts:
                continue
            with self.cond:
                if parts[0] == "EVENT" and len(parts) == 4:
                    ns, kind, who = int(parts[1]), parts[2], parts[3]
                    node.events.append((ns, kind, who))
                    if kind == "join":
                        node.members.add(who)
                    elif kind == "leave":
                        node.members.discard(who)
                elif parts[0] == "READY":
                    node.ready = True
                elif parts[0] == "STATS":
                    st = {"ns": int(parts[1])}
                    for kv in parts[3:]:
                        k, _, v = kv.partition("=")
                        st[k] = int(v)
                    node.stats.append(st)
                self.cond.notify_all()
        with self.cond:
            node.alive = False
            self.cond.notify_all()

    def stop_all(self) -> None:
        """SIGKILL every process this cluster started, by pid, and reap it."""
        for node in self.nodes:
            if node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGKILL)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=5)

    # waiting -----------------------------------------------------------------
    def wait(self, pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
                for n in self.live:
                    if not n.alive:
                        raise RuntimeError(f"node {n.name} exited: see {self.workdir}/"
                                           f"{n.name}.err")
                self.cond.wait(min(left, 0.5))

    def converged(self) -> bool:
        names = {n.name for n in self.live}
        return all(n.members == names for n in self.live)

    def wait_converged(self, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        self.wait(self.converged, timeout, f"all {len(self.live)} nodes to see each other")
        return time.monotonic() - t0


# --------------------------------------------------------------------------- measures


def port_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_ports(start: int, count: int) -> list[int]:
    out: list[int] = []
    p = start
    while len(out) < count:
        if p > 65000:
            raise RuntimeError("no free ports")
        if port_free(p):
            out.append(p)
        p += 1
    return out


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def snapshot_stats(cl: Cluster) -> dict[str, dict[str, int]]:
    with cl.cond:
        before = {n.name: len(n.stats) for n in cl.live}
    for n in cl.live:
        os.kill(n.pid, signal.SIGUSR1)
    cl.wait(lambda: all(len(n.stats) > before[n.name] for n in cl.live), 10, "STATS lines")
    with cl.cond:
        return {n.name: dict(n.stats[-1]) for n in cl.live}


def measure_idle(cl: Cluster, seconds: float) -> dict[str, Any]:
    nodes = list(cl.live)
    s0 = snapshot_stats(cl)
    c0 = {n.name: cpu_ticks(n.pid) for n in nodes}
    t0 = time.monotonic()
    time.sleep(seconds)
    s1 = snapshot_stats(cl)
    c1 = {n.name: cpu_ticks(n.pid) for n in nodes}
    dt = time.monotonic() - t0
    per: dict[str, dict[str, float]] = {}
    for n in nodes:
        a, b = s0[n.name], s1[n.name]
        wall = (b["ns"] - a["ns"]) / 1e9
        d = {k: b[k] - a[k] for k in ("udp_pkts", "udp_bytes", "tcp_conns", "tcp_bytes")}
        per[n.name] = {
            "msgs_per_s": (d["udp_pkts"] + d["tcp_conns"]) / wall,
            "udp_pkts_per_s": d["udp_pkts"] / wall,
            "tcp_conns_per_s": d["tcp_conns"] / wall,
            "bytes_per_s": (d["udp_bytes"] + d["tcp_bytes"]) / wall,
            "udp_bytes_per_s": d["udp_bytes"] / wall,
            "tcp_bytes_per_s": d["tcp_bytes"] / wall,
            "cpu_pct": 100.0 * (c1[n.name] - c0[n.name]) / CLK_TCK / dt,
            "rss_kib": rss_kib(n.pid),
        }
    summary: dict[str, Any] = {"window_s": round(dt, 2), "nodes": len(nodes)}
    for key in ("msgs_per_s", "udp_pkts_per_s", "tcp_conns_per_s", "bytes_per_s",
                "udp_bytes_per_s", "tcp_bytes_per_s", "cpu_pct", "rss_kib"):
        xs = [v[key] for v in per.values()]
        summary[key] = {"mean": statistics.fmean(xs), "min": min(xs), "max": max(xs)}
    summary["per_node"] = per
    return summary


def detection(cl: Cluster, victim: Node, how: str, timeout: float) -> dict[str, Any]:
    """Send SIGKILL or SIGSTOP to victim; time each survivor's leave event for it."""
    survivors = [n for n in cl.live if n is not victim]
    sig = signal.SIGKILL if how == "kill" else signal.SIGSTOP
    if how == "kill":
        cl.live = survivors  # the victim's exit is expected
    t_kill = time.time_ns()
    os.kill(victim.pid, sig)

    def seen(n: Node) -> int | None:
        for ns, kind, who in n.events:
            if who == victim.name and kind == "leave" and ns >= t_kill:
                return ns
        return None

    timed_out = False
    try:
        cl.wait(lambda: all(seen(n) is not None for n in survivors), timeout,
                f"survivors to mark {victim.name} dead")
    except TimeoutError:
        timed_out = True
    with cl.cond:
        times = {n.name: seen(n) for n in survivors}
    secs = [(ns - t_kill) / 1e9 for ns in times.values() if ns is not None]
    return {
        "how": how,
        "victim": victim.name,
        "survivors": len(survivors),
        "detected": len(secs),
        "timed_out": timed_out,
        "first_s": min(secs) if secs else None,
        "p50_s": pct(secs, 50) if secs else None,
        "p99_s": pct(secs, 99) if secs else None,
        "max_s": max(secs) if secs else None,
        "per_survivor_s": {k: (v - t_kill) / 1e9 if v else None for k, v in times.items()},
    }


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    binary, build_info = build(workdir, args.gopath, args.install)
    print(f"built {binary} with {build_info['go']} "
          f"(memberlist {build_info['memberlist_deb']}, {build_info['build']})", flush=True)
    result: dict[str, Any] = {
        "system": "hashicorp/memberlist DefaultLANConfig, loopback",
        "build": build_info,
        "n": args.n,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "kernel": platform.release()},
        "method": {
            "msgs": "UDP datagrams passed to Transport.WriteTo + TCP streams dialed "
                    "(counted by a wrapping Transport in the node)",
            "bytes": "UDP payload bytes + bytes written on TCP streams (no IP/UDP/TCP headers)",
            "cpu": "utime+stime from /proc/<pid>/stat over the idle window, % of one core",
            "detection": "wall clock from the kill/SIGSTOP to each survivor's NotifyLeave",
        },
    }
    cl = Cluster(binary, workdir)
    ports = free_ports(args.base_port, args.n + args.trials + 5)
    spare = ports[args.n:]
    try:
        seed = cl.start("n0", ports[0], [])
        cl.wait(lambda: seed.ready, 10, "n0 to start")
        for i in range(1, args.n):
            cl.start(f"n{i}", ports[i], [ports[0]])
        cl.live = list(cl.nodes)
        took = cl.wait_converged()
        print(f"{args.n} nodes converged in {took:.2f} s after the last start", flush=True)
        # memberlist 0.2.2 does its first push/pull (TCP full state sync) a random stagger
        # plus one PushPullInterval (30 s) after start: warm up past that so the window
        # holds the steady state (one push/pull per node per 30 s), not the quieter start.
        print(f"warm-up {args.warmup:.0f} s, then idle window {args.idle:.0f} s ...", flush=True)
        time.sleep(args.warmup)
        result["idle"] = measure_idle(cl, args.idle)
        result["idle"]["warmup_s"] = args.warmup

        kills: list[dict[str, Any]] = []
        for t in range(args.trials):
            victim = cl.live[-1 - t % (args.n - 1)]
            r = detection(cl, victim, "kill", args.detect_timeout)
            kills.append(r)
            print(f"kill -9 #{t + 1} {victim.name}: p50 {r['p50_s']} max {r['max_s']} "
                  f"({r['detected']}/{r['survivors']})", flush=True)
            new = cl.start(f"r{t}", spare.pop(0), [n.port for n in cl.live[:3]])
            cl.live.append(new)
            cl.wait_converged()
            time.sleep(args.settle)
        result["kill9"] = kills

        stops: list[dict[str, Any]] = []
        for t in range(args.trials):
            victim = cl.live[1 + t % (args.n - 1)]
            r = detection(cl, victim, "stop", args.detect_timeout)
            os.kill(victim.pid, signal.SIGCONT)
            r["rejoin_s"] = round(cl.wait_converged(), 3)
            stops.append(r)
            print(f"SIGSTOP #{t + 1} {victim.name}: p50 {r['p50_s']} max {r['max_s']} "
                  f"({r['detected']}/{r['survivors']}), back in every view "
                  f"{r['rejoin_s']} s after SIGCONT", flush=True)
            time.sleep(args.settle)
        result["sigstop"] = stops
    finally:
        cl.stop_all()
    result["summary"] = summarize(result)
    return result


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("kill9", "sigstop"):
        trials = res.get(key, [])
        allv = [v for t in trials for v in t["per_survivor_s"].values() if v is not None]
        if allv:
            out[key] = {
                "trials": len(trials),
                "p50_s": pct(allv, 50), "p99_s": pct(allv, 99), "max_s": max(allv),
                "min_s": min(allv),
                "per_trial_p50_max_s": [(t["p50_s"], t["max_s"]) for t in trials],
                "all_detected": all(t["detected"] == t["survivors"] for t in trials),
            }
    idle = res.get("idle")
    if idle:
        out["idle"] = {k: idle[k]["mean"] for k in ("msgs_per_s", "bytes_per_s", "cpu_pct",
                                                   "rss_kib")}
    return out


def print_table(res: dict[str, Any]) -> None:
    s = res["summary"]
    n = res["n"]
    print()
    print(f"memberlist LAN baseline, N={n}, loopback ({res['build']['go']}, "
          f"memberlist {res['build']['memberlist_deb']})")
    print(f"{'row':<44} {'value':>30}")
    for key, label in (("kill9", "kill -9: survivors mark dead"),
                       ("sigstop", "SIGSTOP: survivors mark dead")):
        if key in s:
            d = s[key]
            v = f"p50 {d['p50_s']:.2f} / p99 {d['p99_s']:.2f} / max {d['max_s']:.2f} s"
            print(f"{label + ' (' + str(d['trials']) + ' trials)':<44} {v:>30}")
    if "idle" in res:
        i = res["idle"]
        rows = (
            ("idle msgs sent / node / s (mean)", f"{i['msgs_per_s']['mean']:.2f}"),
            ("idle bytes sent / node / s (mean)", f"{i['bytes_per_s']['mean']:.0f} B"),
            ("  of which UDP / TCP", f"{i['udp_bytes_per_s']['mean']:.0f} B / "
                                     f"{i['tcp_bytes_per_s']['mean']:.0f} B"),
            ("idle msgs: UDP datagrams / TCP streams", f"{i['udp_pkts_per_s']['mean']:.2f} / "
                                                       f"{i['tcp_conns_per_s']['mean']:.3f}"),
            ("idle CPU / node (mean, % of a core)", f"{i['cpu_pct']['mean']:.2f} %"),
            ("idle RSS / node (mean)", f"{i['rss_kib']['mean'] / 1024:.1f} MiB"),
        )
        for label, v in rows:
            print(f"{label:<44} {v:>30}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10, help="cluster size (default 10)")
    ap.add_argument("--idle", type=float, default=30.0, help="idle window, s (default 30)")
    ap.add_argument("--warmup", type=float, default=65.0,
                    help="wait after convergence before the idle window, s (default 65)")
    ap.add_argument("--trials", type=int, default=3, help="kill -9 and SIGSTOP trials each")
    ap.add_argument("--settle", type=float, default=3.0, help="pause after convergence, s")
    ap.add_argument("--detect-timeout", type=float, default=60.0)
    ap.add_argument("--base-port", type=int, default=17946)
    ap.add_argument("--gopath", default=DEFAULT_GOPATH,
                    help=f"GOPATH root holding src/github.com/... (default {DEFAULT_GOPATH})")
    ap.add_argument("--install", action="store_true",
                    help="apt-get install -y " + " ".join(APT_PACKAGES) + " first")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (binary, logs)")
    args = ap.parse_args(argv)
    if args.n < 3:
        ap.error("--n must be at least 3")

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="memberlist-baseline-"))
    try:
        try:
            res = run(args, workdir)
        except Skip as e:
            print(f"skipped: {e}", flush=True)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"skipped": str(e)}, indent=2) + "\n")
            return 0
        print_table(res)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(res, indent=2) + "\n")
            print(f"\nwrote {args.json}")
        return 0
    finally:
        if args.keep:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
