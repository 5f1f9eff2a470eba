"""The backup-job load generator: ``python -m examples.cluster.demo --help``.

It fills time-bomb backup jobs through node 1 faster than node 1's bucket
holds, so they overflow to the other nodes. About 70% get their
"confirmation" before they fire and are drained with ``drain`` — some through
node 1, some through another node. The rest fire on whichever node holds
them. Counts come from the nodes themselves, and the summary shows
``lost`` (accepted, yet neither drained, fired, failed nor still live), which
must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from typing import Any

from gobucket_py import DrainOutcome, GroupClient, TaskType, TLSConfig

BUCKET = "backups"
OUTCOMES = ("finished", "failed", "exhausted", "rescued", "drained", "cancelled", "handed_off")


async def totals(clients: dict[str, GroupClient]) -> dict[str, Counter[str]]:
    """Per-node counters of the backups bucket."""
    out: dict[str, Counter[str]] = {}
    for addr, client in clients.items():
        reply: dict[str, Any] = await client.stats()
        out[str(reply.get("node", addr))] = Counter(reply["buckets"][BUCKET])
    return out


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    addrs = [args.node1, *[a for a in args.others.split(",") if a]]
    tls = None
    if args.tls_cert or args.tls_key or args.tls_ca:
        tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_ca)
    clients = {a: GroupClient(a, secret=args.secret or None, tls=tls) for a in addrs}
    for client in clients.values():
        await client.__aenter__()
    try:
        return await _run(args, rng, addrs, clients)
    finally:
        for client in clients.values():
            await client.close()


async def _run(args: argparse.Namespace, rng: random.Random, addrs: list[str],
               clients: dict[str, GroupClient]) -> int:
    before = await totals(clients)
    origin = clients[args.node1]
    others = [clients[a] for a in addrs[1:]] or [origin]
    t0 = time.monotonic()
    placed: dict[str, str] = {}
    refused = 0

    async def fill(i: int) -> None:
        nonlocal refused
        task_id = f"backup-{args.seed}-{i}"
        try:
            result = await origin.fill(BUCKET, task_id, {"order": i}, task_type=TaskType.TIME_BOMB,
                                       run_after=args.delay, life_span=args.delay + 30)
        except Exception as exc:
            refused += 1
            print(f"  fill {task_id} refused: {exc}", file=sys.stderr)
            return
        placed[task_id] = result.node_id

    await asyncio.gather(*(fill(i) for i in range(args.jobs)))
    fill_secs = time.monotonic() - t0
    print(f"filled {len(placed)} backup jobs through {args.node1} in {fill_secs:.2f}s "
          f"(refused {refused})")

    to_drain = rng.sample(sorted(placed), round(len(placed) * args.drain_ratio))
    drained = cross_node = 0

    async def confirm(task_id: str, index: int) -> None:
        nonlocal drained, cross_node
        # The confirmation arrives at a random moment before the job is due.
        await asyncio.sleep(rng.uniform(0.1, max(0.2, args.delay * 0.8 - fill_secs)))
        via_other = index % 2 == 1
        client = others[index % len(others)] if via_other else origin
        result = await client.drain(BUCKET, task_id)
        if result.outcome is DrainOutcome.DRAINED:
            drained += 1
            cross_node += via_other

    await asyncio.gather(*(confirm(t, i) for i, t in enumerate(to_drain)))
    print(f"drained {drained} of {len(to_drain)} confirmations "
          f"({cross_node} through a node other than the origin); waiting for the rest to fire")

    # Wait until every node's bucket is empty again (or a generous deadline).
    deadline = time.monotonic() + args.delay + 30
    while time.monotonic() < deadline:
        now = await totals(clients)
        if sum(c["live"] for c in now.values()) == sum(c["live"] for c in before.values()):
            break
        await asyncio.sleep(0.25)
    after = await totals(clients)

    delta = {n: Counter({k: after[n][k] - before.get(n, Counter())[k] for k in OUTCOMES})
             for n in after}
    fired = sum(d["finished"] for d in delta.values())
    failed = sum(d["failed"] + d["exhausted"] + d["rescued"] for d in delta.values())
    live = sum(after[n]["live"] - before.get(n, Counter())["live"] for n in after)
    accepted = len(placed)
    lost = accepted - drained - fired - failed - max(live, 0)
    per_node = Counter(placed.values())

    print()
    print(f"{'node':<24}{'placed':>8}{'fired':>8}{'drained':>9}{'handed off':>12}")
    for node in sorted(after):
        d = delta[node]
        print(f"{node:<24}{per_node.get(node, 0):>8}{d['finished']:>8}{d['drained']:>9}"
              f"{d['handed_off']:>12}")
    origin_id = next(iter(before))  # totals() asks node 1 first
    forwarded = accepted - per_node.get(origin_id, 0)
    print()
    print(f"filled={accepted} forwarded={forwarded} drained={drained} fired={fired} "
          f"failed={failed} refused={refused} lost={lost}")
    reached = {n for n in per_node if per_node[n]}
    ok = lost == 0 and refused == 0 and len(reached) >= min(len(addrs), 2)
    print("DEMO OK" if ok else "DEMO FAILED")
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.cluster.demo",
                                description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--node1", default="127.0.0.1:6666", help="the origin node (host:port)")
    p.add_argument("--others", default="", help="other nodes, comma-separated; drains are "
                                                "also sent through them")
    p.add_argument("--secret", default=None, help="the cluster's shared secret")
    p.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="client certificate: talk HTTPS to nodes that use TLS (with --tls-key)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the key of --tls-cert")
    p.add_argument("--tls-ca", default=None, metavar="PEM",
                   help="CA the nodes' certificates come from")
    p.add_argument("--jobs", type=int, default=300, help="backup jobs to fill")
    p.add_argument("--delay", type=float, default=5.0, help="seconds before a job fires")
    p.add_argument("--drain-ratio", type=float, default=0.7,
                   help="share of jobs whose confirmation arrives in time")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100_000,
                   help="random seed (also makes task ids unique per run)")
    return p


def main() -> int:
    p = parser()
    args = p.parse_args()
    if (args.tls_cert or args.tls_key or args.tls_ca) and not (args.tls_cert and args.tls_key):
        p.error("--tls-cert and --tls-key go together (--tls-ca needs both)")
    try:
        return asyncio.run(run(args))
    except (ValueError, TypeError) as exc:  # a bad address or secret: one line, exit 2
        p.exit(2, f"{p.prog}: error: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main())
