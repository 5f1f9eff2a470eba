"""Real ``gobucket-node`` subprocesses on loopback, for test_nodes.py.

Each node runs ``python -m gobucket_py --app tests.node_app:buckets --fast``
with its stdout and stderr in files under the test's tmp_path (no pipes: no
reader threads, nothing to fill up). Waiting is always asynchronous (poll with
a deadline, ``asyncio.sleep`` between looks) so that an in-process observer
group on the test's event loop keeps answering probes meanwhile. Only
processes started here are ever signalled, by their own Popen object.

With a :class:`~tests.pki.PKI` (``Nodes(logdir, pki)`` or
:meth:`Nodes.use_tls`) every node serves and dials mutual TLS, with its own
certificate (``GOBUCKET_TLS_CERT/KEY/CA``); the test's own clients and
observer groups take theirs from :meth:`Nodes.tls_for`. Without one (the
default), plain HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gobucket_py import TLSConfig

from .pki import PKI

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-123"
APP = "tests.node_app:buckets"


def _ephemeral_low() -> int:
    """The first port the kernel hands out for outgoing connections and ``bind(0)``."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_given: set[int] = set()


def free_port() -> int:
    """A loopback port, free for TCP and UDP a moment ago, below the kernel's
    ephemeral range when there is room there: a port from ``bind(0)`` may be
    taken meanwhile as the local end of any process's outgoing connection
    (seen: a node's restart port taken while another test run was busy).
    Not one given before in this process."""
    low, high = 20_000, _EPHEMERAL_LOW - 1
    rng = random.Random()
    for _ in range(200 if high - low > 1000 else 0):
        port = rng.randint(low, high)
        if port in _given:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        _given.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without GOBUCKET_* / NODE_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GOBUCKET_", "NODE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def node_argv(*args: str) -> list[str]:
    """``python -m gobucket_py`` with ``args``."""
    return [sys.executable, "-m", "gobucket_py", *args]


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
                   interval: float = 0.02) -> Any:
    """Poll ``predicate`` (sync, or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


class Node:
    """One subprocess node. ``start`` (re)launches it on its fixed port."""

    def __init__(self, node_id: str, port: int, logdir: Path, peers: list[str],
                 env: dict[str, str], advertise: str | None = None,
                 log_level: str = "INFO", tls: TLSConfig | None = None) -> None:
        self.node_id = node_id
        self.log_level = log_level
        self.port = port
        self.advertise = advertise
        self.addr = advertise or f"127.0.0.1:{port}"  # as peers reach it
        self.logdir = logdir
        self.peers = peers
        self.env = env
        self.tls = tls  # its certificate: serves and dials HTTPS (mutual TLS) with it
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.paused = False
        self.ledger = logdir / f"{node_id}.ledger.jsonl"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _paths(self) -> tuple[Path, Path]:
        stem = f"{self.node_id}.run{self.runs}"
        return self.logdir / f"{stem}.out", self.logdir / f"{stem}.err"

    def launch(self) -> None:
        """Start the process (without waiting for it to listen)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        out_path, err_path = self._paths()
        args = ["--app", APP, "--port", str(self.port), "--node-id", self.node_id,
                "--fast", "--secret", SECRET, "--log-level", self.log_level]
        if self.peers:
            args += ["--peers", ",".join(self.peers)]
        if self.advertise:
            args += ["--advertise", self.advertise]
        tls_env: dict[str, str] = {}
        if self.tls is not None:
            tls_env = {"GOBUCKET_TLS_CERT": self.tls.cert, "GOBUCKET_TLS_KEY": self.tls.key}
            if self.tls.ca is not None:
                tls_env["GOBUCKET_TLS_CA"] = self.tls.ca
        env = clean_env(NODE_LEDGER=str(self.ledger), GOBUCKET_NODE_ID=self.node_id,
                        **{**tls_env, **self.env})
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            self.proc = subprocess.Popen(node_argv(*args), cwd=ROOT, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def stdout(self) -> str:
        return self._paths()[0].read_text(errors="replace")

    def stderr(self) -> str:
        return self._paths()[1].read_text(errors="replace")

    async def wait_listening(self, timeout: float = 10.0) -> str:
        """Wait for the ``gobucket-node <id> listening on <addr>`` line; return it."""
        def ready() -> str | None:
            for line in self.stdout().splitlines():
                if line.startswith(f"gobucket-node {self.node_id} listening on {self.addr}"):
                    return line
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.node_id} exited with {self.proc.returncode} "
                                     f"before listening:\n{self.stderr()[-3000:]}")
            return None
        line: str = await wait_for(ready, timeout, f"node {self.node_id} to listen")
        return line

    async def start(self, timeout: float = 10.0) -> str:
        self.launch()
        return await self.wait_listening(timeout)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(sig)

    def pause(self) -> None:
        """SIGSTOP: the process freezes (its sockets stay open, nothing answers)."""
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.signal(signal.SIGCONT)
        self.paused = False

    async def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait (without blocking the loop) for the process to exit; its return code."""
        proc = self.proc
        assert proc is not None
        await wait_for(lambda: proc.poll() is not None, timeout,
                       f"node {self.node_id} (pid {proc.pid}) to exit")
        return proc.returncode

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    def ledger_entries(self) -> list[dict[str, Any]]:
        """Every line of this node's NODE_LEDGER file (see tests/node_app.py), in order.

        A line cut short by a kill -9 (no newline yet) is skipped."""
        if not self.ledger.exists():
            return []
        text = self.ledger.read_text()
        if not text.endswith("\n"):
            text = text[:text.rfind("\n") + 1]
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def ledger_states(self) -> dict[str, list[str]]:
        """``{task_id: [outcome, ...]}`` from this node's NODE_LEDGER file
        (terminal outcomes and ``handed_off``; not ``started`` nor ``lost``)."""
        states: dict[str, list[str]] = {}
        for entry in self.ledger_entries():
            if entry["state"] not in ("started", "lost"):
                states.setdefault(entry["id"], []).append(entry["state"])
        return states

    def cleanup(self) -> None:
        """Terminate, wait, then kill if needed. Only ever our own Popen."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            if self.paused:  # a stopped process would not act on SIGTERM
                proc.send_signal(signal.SIGCONT)
                self.paused = False
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


class Nodes:
    """The subprocess nodes of one test (over mutual TLS with a ``pki``)."""

    def __init__(self, logdir: Path, pki: PKI | None = None) -> None:
        self.logdir = logdir
        self.pki = pki
        self.nodes: dict[str, Node] = {}

    def use_tls(self, pki: PKI) -> None:
        """Mutual TLS for every node added from now on (so: before any)."""
        assert not self.nodes, "use_tls before adding nodes"
        self.pki = pki

    @property
    def scheme(self) -> str:
        """``https`` over TLS, else ``http`` (for raw HTTP calls to a node)."""
        return "http" if self.pki is None else "https"

    def tls_for(self, name: str) -> TLSConfig | None:
        """The certificate of ``name`` (a node, the test's observer group...),
        or None without TLS: ``TaskBucketGroup(..., tls=nodes.tls_for("obs"))``."""
        return None if self.pki is None else self.pki[name]

    @property
    def client_tls(self) -> TLSConfig | None:
        """The test's client certificate: ``GroupClient(addr, ..., tls=nodes.client_tls)``."""
        return self.tls_for("client")

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def add(self, node_id: str, peers: Sequence[Node | str] = (),
            env: Mapping[str, object] | None = None, *, port: int | None = None,
            advertise: str | None = None, log_level: str = "INFO") -> Node:
        """Define a node (seeded with ``peers``; extra environment ``env``), by
        default on a free port."""
        addrs = [p.addr if isinstance(p, Node) else p for p in peers]
        node = Node(node_id, port or free_port(), self.logdir, addrs,
                    {k: str(v) for k, v in (env or {}).items()}, advertise, log_level,
                    self.tls_for(node_id))
        self.nodes[node_id] = node
        return node

    async def start(self, *nodes: Node, timeout: float = 10.0) -> None:
        """Launch several nodes at once and wait until all listen."""
        for node in nodes:
            node.launch()
        await asyncio.gather(*(n.wait_listening(timeout) for n in nodes))

    def cleanup(self) -> None:
        for node in self.nodes.values():
            node.cleanup()

    def dump(self) -> str:
        """The tail of every node's logs (shown when a test fails)."""
        parts = []
        for node in self.nodes.values():
            for run in range(1, node.runs + 1):
                err = node.logdir / f"{node.node_id}.run{run}.err"
                if err.exists():
                    text = err.read_text(errors="replace")
                    parts.append(f"--- {node.node_id} run {run} stderr (tail) ---\n"
                                 f"{text[-4000:]}")
        return "\n".join(parts)


class Proxy:
    """A loopback TCP relay in front of a node, which can black-hole traffic.

    A node started with ``--advertise`` set to the proxy's address is reached
    by its peers only through it. ``blackhole = True`` is a one-way partition:
    bytes sent *to* the node (on new and on pooled keep-alive connections) are
    read and dropped, never delivered, while the node can still reach out.
    It relays bytes, so TLS passes through it unchanged.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.blackhole = False
        self._closed = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    to_node: bool) -> None:
        try:
            while data := await reader.read(65536):
                if to_node and self.blackhole:
                    continue  # dropped on the floor
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _accept(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        # A connection accepted as close() runs is aborted here: the server
        # counts it until it is gone, and its wait_closed() waits for that.
        if self._closed:
            client_w.transport.abort()
            return
        self._writers.add(client_w)
        try:
            node_r, node_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        self._writers.add(node_w)
        if self._closed:
            client_w.transport.abort()
            node_w.transport.abort()
            return
        for task in (asyncio.create_task(self._pipe(client_r, node_w, True)),
                     asyncio.create_task(self._pipe(node_r, client_w, False))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            # Aborted, not closed: a close waits to flush what is buffered,
            # and an end that stopped reading would hold the teardown forever.
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for writer in list(self._writers):
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        if self._server is not None:
            await self._server.wait_closed()
