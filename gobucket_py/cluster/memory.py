"""An in-memory network: many nodes in one event loop, no sockets, and faults on demand.

Messages still go through the msgpack codec (so what a test sends is what the
wire would carry). Every call is two messages, the request and the reply, and
the network can delay, drop or hold either of them, which makes failure
detection, placement and their races testable in milliseconds with a faked
loop clock (looptime)::

    net = MemoryNetwork()
    a = TaskBucketGroup(buckets, ["b"], node_id="a", transport=net.transport("a"))

    net.down("b")                        # connections to and from b are refused
    net.hang("b")                        # b accepts and never answers
    net.up("b")                          # undo down() and hang()

    slow = net.delay("a", "b", 2.0)      # a's messages to b take 2 s longer
    net.drop_replies("a", "b")           # b applies a's requests; a never hears back
    cut = net.partition(["a"], ["b", "c"])          # both ways: calls time out
    net.partition(["a"], ["b"], one_way=True)       # a -> b lost, b -> a delivered
    net.stall("b")                       # SIGSTOP: b's traffic is held, callers time out
    net.resume("b")                      # SIGCONT: what was held is delivered now
    net.crash("b")                       # kill -9: in-flight work lost, b's address is free
    lossy = net.loss(0.01)               # each message (request or reply) lost with p=0.01
    cut.heal()                           # undo one fault
    net.heal()                           # undo every delay, drop, partition, stall and loss

    net.traffic()                        # {address: (messages sent, bytes sent)}
    net.reset_traffic()                  # count from zero again

Every fault method is public and says what a caller sees. To test an app,
:class:`gobucket_py.testing.MemoryCluster` starts N groups on one network and
wraps these controls, with crash and restart of whole nodes.

How a message travels (each of the request and the reply, in this order):

1. It takes the extra latency of its link (the sum of the :meth:`delay` faults
   on ``(sender, receiver)``; none by default).
2. It waits while its sender or its receiver is stalled (:meth:`stall`), and
   goes on when both are resumed.
3. It is lost if, when it arrives, its link is cut (:meth:`partition`), an end
   is hung (:meth:`hang`), it is a reply that :meth:`drop_replies` drops, or
   a :meth:`loss` fault draws it (each message independently).
4. A request that arrives at a node that was killed (:meth:`down`,
   :meth:`crash`) fails the call with a reset (``maybe_delivered=True``, as
   for a real connection reset after the request was written).

A request that arrives is applied: the receiver's handler runs to completion
in its own task, whatever the caller does meanwhile (a caller's timeout does
not cancel it, as an HTTP server goes on after the client gave up). A caller
whose reply does not come within its timeout gets
:class:`~gobucket_py.PeerUnavailableError` with ``maybe_delivered=True``; a
call to an address where nothing listens (or that is :meth:`down`) is refused
at once with ``maybe_delivered=False``.

Each node's handlers run in a copy of the :mod:`contextvars` context its
transport was started in, so per-node context (a log field, a test's node
tag) follows the node's work as it would follow a process. With no fault
configured a call costs one task and two msgpack round trips, nothing more.

Traffic is counted per sending address (:meth:`~MemoryNetwork.traffic`): a
request counts for its caller when it is put on the network, a reply for the
node that answers when its handler has run; bytes are the msgpack-encoded
body. What a fault later loses was still sent.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable, Iterable
from typing import Any

from ..config import check_delay
from ..errors import PeerUnavailableError, ProtocolError, UnknownBucketError
from .protocol import Kind, decode, decode_reply, encode
from .transport import Handler, Transport, raise_for_status

__all__ = ["Fault", "MemoryNetwork", "MemoryTransport"]

Link = tuple[str, str]


class Fault:
    """One fault injected into a :class:`MemoryNetwork`, as returned by
    :meth:`~MemoryNetwork.delay`, :meth:`~MemoryNetwork.drop_replies`,
    :meth:`~MemoryNetwork.partition`, :meth:`~MemoryNetwork.stall` and
    :meth:`~MemoryNetwork.loss`.

    ``heal()`` undoes just this fault (idempotent); ``active`` says whether it
    still applies. ``str(fault)`` describes it, e.g. ``partition n1 | n2,n3``::

        cut = net.partition(["n1"], ["n2", "n3"])
        await asyncio.sleep(5)
        cut.heal()
    """

    __slots__ = ("_net", "_undo", "active", "kind", "subject", "text")

    def __init__(self, net: MemoryNetwork, kind: str, text: str,
                 undo: Callable[[], None], subject: str = "") -> None:
        self._net = net
        self._undo = undo
        #: ``"delay"``, ``"drop_replies"``, ``"partition"``, ``"stall"`` or ``"loss"``.
        self.kind = kind
        #: The stalled address (for a stall).
        self.subject = subject
        self.text = text
        self.active = True

    def heal(self) -> None:
        """Undo this fault. Messages it held (a stall) are delivered now."""
        if not self.active:
            return
        self.active = False
        self._undo()
        self._net._faults.remove(self)
        self._net._refresh()

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<Fault {self.text}{'' if self.active else ' (healed)'}>"


def _nodes(side: str | Iterable[str]) -> list[str]:
    return [side] if isinstance(side, str) else list(dict.fromkeys(side))


class MemoryNetwork:
    """Routes calls between :class:`MemoryTransport` s by address, with faults.

    Every fault method is documented with what the caller sees; the module
    docstring says how a message travels. The network is deterministic: with
    a faked loop clock the same calls and faults give the same run (a
    :meth:`loss` fault draws from its own seeded ``random.Random``).

    ``record_calls=False`` leaves :attr:`calls` empty (a long simulation of
    many nodes would otherwise keep every call it made).
    """

    def __init__(self, *, max_body: int = 4 * 1024 * 1024, record_calls: bool = True) -> None:
        self.max_body = max_body
        self._record_calls = record_calls
        self._handlers: dict[str, Handler] = {}
        self._transports: dict[str, MemoryTransport] = {}
        self._down: set[str] = set()
        self._hung: set[str] = set()
        self._delays: dict[Link, float] = {}
        self._cut: dict[Link, int] = {}  # partitions cutting each directed link
        self._drops: dict[Link, int] = {}  # drop_replies faults on each (caller, callee)
        self._stalled: dict[str, asyncio.Event] = {}  # set on resume
        self._losses: list[tuple[float, random.Random]] = []  # loss faults: (rate, rng)
        # address -> [messages, bytes] it sent; transports keep a reference to their own.
        self._sent: dict[str, list[int]] = {}
        self._faults: list[Fault] = []
        # True when a message may be anything but delivered at once (the fast path's test).
        self._faulty = False
        #: Every call made, as ``(from_addr, to_addr, kind)``.
        self.calls: list[tuple[str, str, Kind]] = []

    def transport(self, address: str) -> MemoryTransport:
        """A transport that will serve at ``address`` once started."""
        return MemoryTransport(self, address)

    # -- process faults (existing) -----------------------------------------------

    def down(self, address: str) -> None:
        """Refuse every call to and from ``address`` (a killed process whose
        port refuses connections). Requests in flight to it fail with a reset."""
        self._down.add(address)
        self._refresh()

    def hang(self, address: str) -> None:
        """Calls to and from ``address`` never complete (a stuck process):
        their messages are lost and callers time out."""
        self._hung.add(address)
        self._refresh()

    def up(self, address: str) -> None:
        """Undo :meth:`down` and :meth:`hang`."""
        self._down.discard(address)
        self._hung.discard(address)
        self._refresh()

    def crash(self, address: str) -> None:
        """Kill the process at ``address`` without grace (``kill -9``).

        Its transport is closed at once: its handlers in progress are
        cancelled, requests in flight to it fail with a reset, replies in
        flight to it are lost (the replies and requests it sent before are
        still delivered, late if their link is slow), and new calls to
        ``address`` are refused until
        a new transport starts there (a restart: a new
        :class:`~gobucket_py.TaskBucketGroup` with the same ``node_id`` and a
        fresh ``net.transport(address)``, which gets a new boot id). The
        node's own work (its buckets' timers and running tasks) belongs to
        its group, not to the network: a test abandons that group and stops
        its tasks, as :meth:`gobucket_py.testing.MemoryCluster.crash` does.
        By hand::

            net.crash("n2")
            ...                                   # downtime
            n2 = TaskBucketGroup(buckets, ["n1"], node_id="n2",
                                 transport=net.transport("n2"))
            await n2.start()
        """
        transport = self._transports.get(address)
        if transport is not None:
            transport._kill()

    # -- link faults ----------------------------------------------------------------

    def delay(self, src: str, dst: str, seconds: float, *, both_ways: bool = False) -> Fault:
        """Add ``seconds`` of latency to every message from ``src`` to ``dst``
        (and back, with ``both_ways``); delays on one link add up.

        A delay beyond the caller's timeout makes late replies: the request is
        still applied when it arrives, the caller has timed out
        (``PeerUnavailableError``, ``maybe_delivered=True``)::

            slow = net.delay("n1", "n2", 1.5)   # n1's requests reach n2 1.5 s late
            ...
            slow.heal()
        """
        extra = check_delay("seconds", seconds)
        links = [(src, dst), (dst, src)] if both_ways else [(src, dst)]

        def apply(sign: float) -> None:
            for link in links:
                total = self._delays.get(link, 0.0) + sign * extra
                if total > 1e-12:
                    self._delays[link] = total
                else:
                    self._delays.pop(link, None)

        apply(1.0)
        arrow = "<->" if both_ways else "->"
        return self._add(Fault(self, "delay", f"delay {src}{arrow}{dst} +{extra:g}s",
                               lambda: apply(-1.0)))

    def drop_replies(self, src: str, dst: str) -> Fault:
        """Calls from ``src`` to ``dst`` are delivered and applied, but their
        replies are lost: ``src`` times out (``PeerUnavailableError``,
        ``maybe_delivered=True``) although ``dst`` did the work::

            lossy = net.drop_replies("n1", "n2")   # n2 takes n1's forwards; n1 never knows
        """
        link = (src, dst)
        self._drops[link] = self._drops.get(link, 0) + 1
        return self._add(Fault(self, "drop_replies", f"drop replies {src}->{dst}",
                               lambda: _decrement(self._drops, link)))

    def partition(self, a: str | Iterable[str], b: str | Iterable[str], *,
                  one_way: bool = False) -> Fault:
        """Cut the links between the nodes of ``a`` and those of ``b``.

        Messages across the cut are lost, as in a blackholed network: calls
        across it time out (``PeerUnavailableError``, ``maybe_delivered=True``);
        they are never refused. With ``one_way`` only messages from ``a`` to
        ``b`` are lost: ``a``'s calls to ``b`` time out undelivered, while
        ``b``'s calls to ``a`` are delivered and applied but their replies are
        lost. Nodes inside one side still talk::

            cut = net.partition(["n1"], ["n2", "n3"])      # n1 alone
            net.partition("n1", "n2", one_way=True)         # n1 cannot reach n2
        """
        left, right = _nodes(a), _nodes(b)
        if not left or not right:
            raise ValueError("partition: both sides need at least one address")
        both = set(left) & set(right)
        if both:
            raise ValueError(f"partition: {sorted(both)} on both sides")
        links = [(x, y) for x in left for y in right]
        if not one_way:
            links += [(y, x) for x in left for y in right]
        for link in links:
            self._cut[link] = self._cut.get(link, 0) + 1

        def undo() -> None:
            for link in links:
                _decrement(self._cut, link)

        arrow = "->" if one_way else "|"
        return self._add(Fault(self, "partition",
                               f"partition {','.join(left)} {arrow} {','.join(right)}", undo))

    def stall(self, address: str) -> Fault:
        """Freeze the node's traffic, as ``SIGSTOP`` or ``docker pause`` would.

        Messages to and from ``address`` are held (the kernel buffers them)
        and delivered, in order, when it :meth:`resume` s; callers time out
        meanwhile (``maybe_delivered=True``) and the node handles their
        requests late. The node's own loop keeps time: its timers fire and
        its tasks run (one event loop serves every node), only its network is
        frozen. Stalling a stalled node changes nothing::

            net.stall("n2")
            await asyncio.sleep(3)    # n2's peers suspect it; what they sent waits
            net.resume("n2")          # n2 gets every held request now
        """
        if address not in self._stalled:
            self._stalled[address] = asyncio.Event()
        return self._add(Fault(self, "stall", f"stall {address}",
                               lambda: self._resume(address), address))

    def resume(self, address: str) -> None:
        """Undo :meth:`stall`: deliver what was held for ``address`` and let
        its traffic flow again (heals every stall fault of ``address``)."""
        for fault in [f for f in self._faults if f.kind == "stall" and f.subject == address]:
            fault.heal()
        self._resume(address)
        self._refresh()

    def _resume(self, address: str) -> None:
        waiter = self._stalled.pop(address, None)
        if waiter is not None:
            waiter.set()

    def loss(self, rate: float, rng: random.Random | None = None) -> Fault:
        """Lose each message -- every request and every reply, on every link
        -- independently with probability ``rate`` (0 to 1), as a lossy
        network would. A lost request is never applied and a lost reply
        comes after the work was done; either way the caller times out
        (``PeerUnavailableError``, ``maybe_delivered=True``), as across a
        :meth:`partition`. Loss faults add up (each draws on its own).
        ``rng`` (default ``random.Random(0)``) makes a run repeatable::

            lossy = net.loss(0.01)        # 1% of messages vanish
            ...
            lossy.heal()
        """
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"loss: rate must be a number from 0 to 1, got {rate!r}")
        entry = (float(rate), rng if rng is not None else random.Random(0))
        self._losses.append(entry)
        return self._add(Fault(self, "loss", f"loss {rate:g}",
                               lambda: self._losses.remove(entry)))

    def traffic(self) -> dict[str, tuple[int, int]]:
        """What each address sent since it first started (or since
        :meth:`reset_traffic`): ``{address: (messages, bytes)}``.

        A request counts for its caller once it is on the network (a call
        refused at once sends nothing), a reply for the node that answers
        once its handler has run; bytes are the msgpack-encoded body (an
        error reply counts as a message of 0 bytes). Messages a fault loses
        afterwards were still sent. Restarts at one address add up."""
        return {addr: (counts[0], counts[1]) for addr, counts in self._sent.items()}

    def reset_traffic(self) -> None:
        """Set every address's :meth:`traffic` counters back to zero."""
        for counts in self._sent.values():
            counts[0] = counts[1] = 0

    def heal(self) -> None:
        """Undo every :meth:`delay`, :meth:`drop_replies`, :meth:`partition`,
        :meth:`stall` and :meth:`loss` (not :meth:`down`, :meth:`hang` or
        :meth:`crash`)."""
        for fault in list(self._faults):
            fault.heal()

    @property
    def faults(self) -> list[Fault]:
        """The faults in effect, oldest first."""
        return list(self._faults)

    def _add(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        self._refresh()
        return fault

    def _refresh(self) -> None:
        self._faulty = bool(self._delays or self._cut or self._drops or self._stalled
                            or self._hung or self._down or self._losses)

    # -- delivery ---------------------------------------------------------------------

    async def _deliver(self, caller: MemoryTransport, addr: str, kind: Kind, body: bytes,
                       timeout: float) -> dict[str, Any]:
        src = caller.address
        if self._record_calls:
            self.calls.append((src, addr, kind))
        if src in self._down:  # a killed process sends nothing either
            raise PeerUnavailableError("this node is down", maybe_delivered=False)
        target = self._transports.get(addr)
        if target is None or addr in self._down:
            raise PeerUnavailableError(f"cannot connect to peer {addr}", maybe_delivered=False,
                                       refused=True)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[dict[str, Any]] = loop.create_future()
        carrier = loop.create_task(self._carry(caller, target, kind, body, reply),
                                   context=target._context.copy())
        target._carriers[carrier] = reply
        carrier.add_done_callback(target._carried)
        sent = caller._sent
        sent[0] += 1
        sent[1] += len(body)
        try:
            async with asyncio.timeout(timeout):
                return await reply
        except TimeoutError:
            raise PeerUnavailableError(
                f"peer {addr} did not answer {kind.name} within {timeout:g}s") from None

    async def _carry(self, caller: MemoryTransport, target: MemoryTransport, kind: Kind,
                     body: bytes, reply: asyncio.Future[dict[str, Any]]) -> None:
        """Carry one call: the request, the handler (in the receiver's
        context, whatever the caller does meanwhile), and the reply."""
        src, dst = caller.address, target.address
        if self._faulty and not await self._travel(src, dst, None):
            return  # the request was lost: the caller times out
        handler = target._handler
        if handler is None or dst in self._down:
            if not reply.done():
                reply.set_exception(PeerUnavailableError(f"connection to peer {dst} reset"))
            return
        error: BaseException | None = None
        payload = b""
        try:
            payload = encode(await handler(kind, decode(body, self.max_body)))
        except ProtocolError as exc:
            error = _status_error(dst, 400, str(exc))
        except UnknownBucketError as exc:
            error = _status_error(dst, 404, str(exc))
        except Exception as exc:  # a handler bug: the caller sees it, as in a test it should
            error = exc
        # Answered: the reply is on the wire, and arrives even if the target
        # is killed now (kill -9 leaves what a process sent to the kernel).
        carrier = asyncio.current_task()
        if carrier is not None:
            target._carriers.pop(carrier, None)
        sent = target._sent
        sent[0] += 1
        sent[1] += len(payload)
        if self._faulty and not await self._travel(dst, src, (src, dst)):
            return  # the reply was lost
        if reply.done() or caller._handler is None:
            return  # the caller gave up, or its process died
        if error is not None:
            reply.set_exception(error)
        else:
            try:
                reply.set_result(decode_reply(dst, kind, payload, self.max_body))
            except PeerUnavailableError as exc:
                reply.set_exception(exc)

    async def _travel(self, frm: str, to: str, call: Link | None) -> bool:
        """One message from ``frm`` to ``to`` (a reply when ``call`` is the
        ``(caller, callee)`` it answers): wait out its link's delay and any
        stall; False if it is lost on arrival."""
        extra = self._delays.get((frm, to))
        if extra:
            await asyncio.sleep(extra)
        stalled = self._stalled
        while stalled:
            waiter = stalled.get(frm) or stalled.get(to)
            if waiter is None:
                break
            await waiter.wait()
        if (frm, to) in self._cut or frm in self._hung or to in self._hung:
            return False
        for rate, rng in self._losses:
            if rng.random() < rate:
                return False
        return call is None or call not in self._drops


def _decrement(counts: dict[Link, int], link: Link) -> None:
    left = counts.get(link, 0) - 1
    if left > 0:
        counts[link] = left
    else:
        counts.pop(link, None)


def _status_error(addr: str, status: int, text: str) -> Exception:
    try:
        raise_for_status(addr, status, text)
    except Exception as exc:
        return exc
    raise AssertionError("raise_for_status did not raise")  # pragma: no cover


class MemoryTransport(Transport):
    """One node's end of a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self.network = network
        self.address = address
        self._handler: Handler | None = None
        self._context = contextvars.copy_context()
        # [messages, bytes] sent from this address (the network's counters for it).
        self._sent: list[int] = network._sent.setdefault(address, [0, 0])
        # Calls being carried to this node (their handlers run here), and their replies.
        self._carriers: dict[asyncio.Task[None], asyncio.Future[dict[str, Any]]] = {}

    async def start(self, handler: Handler) -> None:
        if self.address in self.network._handlers:
            raise OSError(f"address {self.address} is already in use")
        self._handler = handler
        self._context = contextvars.copy_context()
        self.network._handlers[self.address] = handler
        self.network._transports[self.address] = self

    def shared_clock(self) -> float:
        """The nodes of one in-memory network share an event loop: its clock
        (virtual in simulations, where wall time does not advance with it)."""
        return asyncio.get_running_loop().time()

    async def call(self, addr: str, kind: Kind, message: dict[str, Any],
                   timeout: float) -> dict[str, Any]:
        if self._handler is None:
            raise PeerUnavailableError("transport is closed", maybe_delivered=False)
        return await self.network._deliver(self, addr, kind, encode(message), timeout)

    def _carried(self, carrier: asyncio.Task[None]) -> None:
        reply = self._carriers.pop(carrier, None)
        if reply is None or reply.done():
            return
        if carrier.cancelled():
            reply.set_exception(PeerUnavailableError(f"connection to peer {self.address} reset"))
        elif carrier.exception() is not None:
            reply.set_exception(carrier.exception())  # type: ignore[arg-type]

    def _unregister(self) -> None:
        net = self.network
        if net._handlers.get(self.address) is self._handler and self._handler is not None:
            del net._handlers[self.address]
        if net._transports.get(self.address) is self:
            del net._transports[self.address]
        self._handler = None

    def _kill(self) -> None:
        self._unregister()
        for carrier in list(self._carriers):
            carrier.cancel()

    async def close(self) -> None:
        self._unregister()
