"""``gobucket-node``: run one node of a gobucket cluster.

Every flag can also be set through the environment variable shown in
``--help`` (flags win). The app is user code: ``--app module:factory`` names a
callable (sync or async) that returns either ``{name: TaskBucket}`` or a
ready ``TaskBucketGroup``. SIGTERM and SIGINT stop the node gracefully
(pending tasks are handed to peers, running ones get a grace period, the rest
go to on_panic) and it exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from .bucket import TaskBucket
from .cluster.discovery import own_address
from .cluster.group import TaskBucketGroup
from .cluster.tls import TLSConfig
from .config import GroupConfig
from .observe.web import serve_pages

__all__ = ["main"]

log = logging.getLogger("gobucket_py")

#: Secrets published with the demos (docker-compose.yml): a node using one warns.
DEMO_SECRETS = frozenset({"change-me-demo-secret"})

ENV = "GOBUCKET_"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line, exit code 2 (argparse's convention for usage errors).
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV + name, default)


#: Options whose default --help does not show: secrets read from the
#: environment, and those whose help text says what the default is.
_UNSHOWN = frozenset({"secret", "secret_file", "pages_token", "promote_after", "node_id",
                      "advertise"})


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest in _UNSHOWN:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The node runner's argument parser (defaults come from GOBUCKET_* variables)."""
    p = _Parser(prog="gobucket-node", description=__doc__.split("\n\n")[0] if __doc__ else None,
                formatter_class=_Help)
    p.add_argument("--app", default=_env("APP"), metavar="MODULE:FACTORY",
                   help="user code returning {bucket: TaskBucket} or a TaskBucketGroup "
                        "[GOBUCKET_APP]")
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"),
                   help="address to listen on [GOBUCKET_HOST]")
    # (string defaults: argparse converts them with type=, and reports a bad one)
    p.add_argument("--port", type=int, default=_env("PORT", "6666") or "6666",
                   help="port to listen on; 0 picks a free one [GOBUCKET_PORT]")
    p.add_argument("--node-id", default=_env("NODE_ID"),
                   help="this node's id (default: its advertised address) [GOBUCKET_NODE_ID]")
    p.add_argument("--advertise", default=_env("ADVERTISE"), metavar="HOST:PORT",
                   help="address peers use to reach this node (default: host:port; for a "
                        "wildcard host such as 0.0.0.0, this host's own IP and port) "
                        "[GOBUCKET_ADVERTISE]")
    p.add_argument("--peers", default=_env("PEERS", ""), metavar="A:PORT,B:PORT",
                   help="seed peers, comma-separated; dns:NAME:PORT stands for every A/AAAA "
                        "record of NAME (looked up again every rejoin interval); this "
                        "node's own address is ignored [GOBUCKET_PEERS]")
    p.add_argument("--secret", default=_env("SECRET"),
                   help="shared HMAC secret, or id1=s1,id2=s2 during a key rotation "
                        "[GOBUCKET_SECRET]")
    p.add_argument("--secret-file", default=_env("SECRET_FILE"),
                   help="read the secret from this file instead [GOBUCKET_SECRET_FILE]")
    p.add_argument("--tls-cert", default=_env("TLS_CERT"), metavar="PEM",
                   help="this node's certificate chain: peer traffic over HTTPS (with "
                        "--tls-key) [GOBUCKET_TLS_CERT]")
    p.add_argument("--tls-key", default=_env("TLS_KEY"), metavar="PEM",
                   help="the key of --tls-cert [GOBUCKET_TLS_KEY]")
    p.add_argument("--tls-ca", default=_env("TLS_CA"), metavar="PEM",
                   help="CA that peers' certificates must come from: mutual TLS "
                        "[GOBUCKET_TLS_CA]")
    p.add_argument("--pages-token", default=_env("PAGES_TOKEN"), metavar="TOKEN",
                   help="/metrics and /v1/status answer only 'Authorization: Bearer TOKEN' "
                        "(16+ characters); open the dashboard as /#token=TOKEN "
                        "[GOBUCKET_PAGES_TOKEN]")
    p.add_argument("--insecure", action="store_true",
                   default=(_env("INSECURE", "") or "").lower() in ("1", "true", "yes"),
                   help="allow a non-loopback address without a secret [GOBUCKET_INSECURE]")
    p.add_argument("--stop-grace", type=float, default=_env("STOP_GRACE", "5") or "5",
                   help="seconds running tasks get on stop before on_panic "
                        "[GOBUCKET_STOP_GRACE]")
    p.add_argument("--replicas", type=int, default=_env("REPLICAS", "0") or "0",
                   choices=(0, 1, 2),
                   help="backups of each pending time-bomb on other nodes, so a node's "
                        "crash loses none of them (0, 1 or 2) "
                        "[GOBUCKET_REPLICAS]")
    p.add_argument("--promote-after", type=float, default=_env("PROMOTE_AFTER") or None,
                   help="with replicas: seconds after a node is declared dead that its "
                        "backups take its tasks over (0: at once; default: when it is "
                        "presumed lost, lost_after) [GOBUCKET_PROMOTE_AFTER]")
    p.add_argument("--placement", default=_env("PLACEMENT", "local"),
                   choices=("local", "balanced"),
                   help="where fills go while this node has room: 'local' (here; only the "
                        "overflow goes to peers) or 'balanced' (to a peer when a random "
                        "peer has over 1%% of the bucket more free room than this node) "
                        "[GOBUCKET_PLACEMENT]")
    p.add_argument("--loop", default=_env("LOOP", "asyncio"), choices=("asyncio", "uvloop"),
                   help="event loop: asyncio's own, or uvloop (pip install "
                        "'gobucket_py[uvloop]') [GOBUCKET_LOOP]")
    p.add_argument("--fast", action="store_true",
                   default=(_env("FAST", "") or "").lower() in ("1", "true", "yes"),
                   help="use GroupConfig.local() timers (tests and single-host demos; "
                        "--stop-grace still applies) "
                        "[GOBUCKET_FAST]")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                   help="log level [GOBUCKET_LOG_LEVEL]")
    p.add_argument("--version", action="version", version=f"gobucket_py {__version__}")
    return p


def load_app(spec: str) -> Any:
    """Import ``module:factory`` (the current directory is importable)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--app must be module:factory, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--app: cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--app: {module_name!r} has no callable {attr!r}")
    return factory


async def _build(args: argparse.Namespace, factory: Any) -> TaskBucketGroup:
    made = factory()
    if inspect.isawaitable(made):
        made = await made
    if isinstance(made, TaskBucketGroup):
        log.info("--app %s made its own TaskBucketGroup: its arguments apply, and the "
                 "node flags (host, port, peers, secret, TLS, replicas...) are not used "
                 "event=app_group", args.app)
        return made
    if not isinstance(made, dict) or not all(isinstance(b, TaskBucket) for b in made.values()):
        raise ValueError(f"--app {args.app}: the factory must return {{name: TaskBucket}} or a "
                         f"TaskBucketGroup, got {type(made).__name__}")
    secret = args.secret
    base = GroupConfig.local() if args.fast else GroupConfig()
    config = GroupConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__},
                            "stop_grace": args.stop_grace, "replicas": args.replicas,
                            "promote_after": args.promote_after,
                            "placement": args.placement})
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    advertise = args.advertise or await _own_advertise(args.host, args.port, peers)
    tls = None
    if args.tls_cert or args.tls_key or args.tls_ca:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("tls_cert/tls_key: --tls-cert and --tls-key go together "
                             "(--tls-ca needs both)")
        tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_ca)
    if secret and secret.strip() in DEMO_SECRETS:
        log.warning("the node runs with the public demo secret: anyone who reaches its "
                    "port can fill and drain tasks; set GOBUCKET_SECRET event=demo_secret")
    return TaskBucketGroup(made, peers, host=args.host, port=args.port, node_id=args.node_id,
                           advertise=advertise, secret=secret or None, tls=tls,
                           insecure=args.insecure, config=config)


async def _own_advertise(host: str, port: int, peers: list[str]) -> str | None:
    """For a wildcard host with nothing to advertise: this host's own IP (a
    container's, so that every replica of a scaled service advertises its
    own address and gets its own node id), else None."""
    if host not in ("0.0.0.0", "::", ""):
        return None
    ip = await own_address(peers)
    if ip is None or (":" in ip and port == 0):
        log.warning("listening on a wildcard address, and this host's own IP is unknown: "
                    "peers are told %s:%d; set --advertise (GOBUCKET_ADVERTISE) "
                    "event=advertise_unknown", host, port)
        return None
    address = ip if port == 0 else f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    log.info("advertising this host's own IP event=advertise_detected advertise=%s", address)
    return address


def _freeze_startup_objects() -> None:
    """Leave what exists once the node has started (modules, the app, the
    group) out of every later collector pass: a full pass over them held
    the loop ~10-40 ms (tasks fired that late), and they live as long as
    the process. This process is the node's own; an app that embeds a
    group decides this for itself (README, "Timers")."""
    gc.collect()  # what startup left as garbage is not frozen with the rest
    gc.freeze()


async def run(args: argparse.Namespace, factory: Any) -> int:
    """Start the node, serve until SIGTERM/SIGINT, stop gracefully."""
    group = await _build(args, factory)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # the dashboard, /metrics and /v1/status next to the peer protocol
    serve_pages(group, args.pages_token or None)
    await group.start()
    _freeze_startup_objects()
    peers = ",".join(group.seeds) or "-"
    print(f"gobucket-node {group.node_id} listening on {group.address} "
          f"buckets={','.join(group.buckets)} peers={peers} loop={args.loop} "
          f"gc_frozen={gc.get_freeze_count()} event=node_started", flush=True)
    await stop.wait()
    log.info("signal received; stopping event=node_stopping node=%s", group.node_id)
    await group.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gobucket-node`` and ``python -m gobucket_py``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for action in parser._actions:  # defaults from GOBUCKET_* skip argparse's choices check
        value = getattr(args, action.dest, None)
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            parser.error(f"{action.option_strings[0]} must be one of {choices}, got {value!r} "
                         f"(from {ENV}{action.dest.upper()}?)")
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.app:
        parser.error("--app (or GOBUCKET_APP) is required")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    if args.secret_file:
        try:
            with open(args.secret_file, encoding="utf-8") as fh:
                args.secret = fh.read().strip()
        except OSError as exc:
            parser.error(f"--secret-file: {exc}")
    loop_factory = None
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            parser.error("--loop uvloop needs uvloop: pip install 'gobucket_py[uvloop]'")
        loop_factory = uvloop.new_event_loop
    try:
        factory = load_app(args.app)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(run(args, factory))
    except (ValueError, TypeError, OSError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
