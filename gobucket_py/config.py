"""Configuration objects: frozen dataclasses that validate themselves.

Every invalid value raises :class:`ValueError` naming the field, so a typo in a
deployment fails at start-up rather than at the first task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BucketConfig", "GroupConfig"]


#: Every time in seconds is below this (the peer protocol's bound too).
MAX_SECONDS = 1e12


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond a float's range
        raise ValueError(f"{name} must be finite, got a number too large for a "
                         "float") from None
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if abs(number) >= MAX_SECONDS:  # (loop time + 1e306 s is no tick of a timer wheel)
        raise ValueError(f"{name} must be under {MAX_SECONDS:.0e} seconds (about 31,700 "
                         f"years), got {value!r}")
    return number


def check_delay(name: str, value: object) -> float:
    """Validate a delay in seconds (a finite number >= 0)."""
    delay = _check_number(name, value)
    if delay < 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    return delay


def check_times(life_span: object, run_after: object, *, prefix: str = "") -> tuple[float, float]:
    """Validate a (life_span, run_after) pair; return them as floats.

    Shared by :class:`BucketConfig` and per-task overrides so both give the
    same messages.
    """
    ls = _check_number(f"{prefix}life_span", life_span)
    ra = _check_number(f"{prefix}run_after", run_after)
    if ls <= 0:
        raise ValueError(f"{prefix}life_span must be > 0 seconds, got {life_span!r}")
    if ra < 0:
        raise ValueError(f"{prefix}run_after must be >= 0 seconds, got {run_after!r}")
    if ra >= ls:
        raise ValueError(
            f"{prefix}run_after ({run_after!r}) must be < life_span ({life_span!r}): "
            "the lifespan counts from fill and includes the run_after wait"
        )
    return ls, ra


@dataclass(frozen=True, slots=True)
class BucketConfig:
    """How one :class:`~gobucket_py.TaskBucket` behaves. All times are seconds.

    ``life_span``
        Time from fill to the task's deadline, *including* the ``run_after``
        wait (GoBucket parity). If ``on_execute`` is still running at the
        deadline it is cancelled and ``on_task_exhausted`` runs.
    ``run_after``
        Delay of a time-bomb task before it fires. Must be < ``life_span``.
    ``max_bucket``
        Admission limit: live tasks (waiting, running or in a hook). 1024 is
        GoBucket's documented default.
    ``hook_timeout``
        Bound on each of on_finish, on_execute_error, on_task_exhausted and
        on_panic, so one stuck hook cannot hold a slot (or ``rescue()``) forever.
    ``outcome_retention``
        How long the outcome of an ended task is remembered, so that a
        retried ``drain`` (or a ``get``) says how it ended instead of
        NOT_FOUND: at least half of it and at most all of it (records are
        dropped a generation at a time). 300-600 s covers any sane retry
        loop of a backup job.
    ``max_outcomes``
        Bound on those records per bucket, so a burst of outcomes cannot
        grow memory without limit: past it the oldest are forgotten early.
    ``replicas``
        Backups of each pending time-bomb on other nodes (0, 1 or 2), for
        this bucket; None follows ``GroupConfig.replicas``. Only used in a
        :class:`~gobucket_py.TaskBucketGroup`; see the README's "Replicas".
    ``max_backups``
        Bound on the backups this node keeps for peers' tasks in this
        bucket (None: ``max_bucket``). A peer whose backup store is full
        refuses more, and the primary tries another peer.

    >>> BucketConfig(life_span=60, run_after=30)  # doctest: +NORMALIZE_WHITESPACE
    BucketConfig(life_span=60.0, run_after=30.0, max_bucket=1024, hook_timeout=30.0,
                 outcome_retention=600.0, max_outcomes=1000000, replicas=None,
                 max_backups=None)
    """

    life_span: float
    run_after: float = 0.0
    max_bucket: int = 1024
    hook_timeout: float = 30.0
    outcome_retention: float = 600.0
    max_outcomes: int = 1_000_000
    replicas: int | None = None
    max_backups: int | None = None

    def __post_init__(self) -> None:
        ls, ra = check_times(self.life_span, self.run_after)
        object.__setattr__(self, "life_span", ls)
        object.__setattr__(self, "run_after", ra)
        mb = self.max_bucket
        if isinstance(mb, bool) or not isinstance(mb, int) or mb < 1:
            raise ValueError(f"max_bucket must be an int >= 1, got {mb!r}")
        ht = _check_number("hook_timeout", self.hook_timeout)
        if ht <= 0:
            raise ValueError(f"hook_timeout must be > 0 seconds, got {self.hook_timeout!r}")
        object.__setattr__(self, "hook_timeout", ht)
        object.__setattr__(self, "outcome_retention",
                           check_delay("outcome_retention", self.outcome_retention))
        _count("max_outcomes", self.max_outcomes, 0)
        if self.replicas is not None:
            _replicas(self.replicas)
        if self.max_backups is not None:
            _count("max_backups", self.max_backups, 0)


#: The values of ``GroupConfig.placement``.
PLACEMENTS = ("local", "balanced")


def _replicas(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2:
        raise ValueError(f"replicas must be 0, 1 or 2, got {value!r}")
    return value


def check_positive(name: str, value: object) -> float:
    """Validate a duration in seconds (a finite number > 0)."""
    number = _check_number(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    return number


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """Tuning of a :class:`~gobucket_py.TaskBucketGroup`. Times are seconds.

    The defaults are for a LAN (or one host); :meth:`local` is a faster preset
    for tests. Each default says why it is what it is. Detection of a dead
    node takes about ``probe_interval + 2 * probe_timeout + suspicion_timeout``
    (2.6 s with the defaults up to 10 nodes; BENCHMARKS.md has the measured
    figures by cluster size).
    """

    #: One peer is probed this often (the next in a rotation by node id), so
    #: a node sends about 1.7 probes and 1.7 acks per second at any cluster
    #: size (0.6 s keeps that under 4 messages a second with syncs and
    #: pushes, and an idle node near 0.3 % of a core; detection stays under
    #: 3 s at p99 for 10 nodes). Each probe and ack carries the sender's free
    #: capacity; forward replies carry it too.
    probe_interval: float = 0.6
    #: A direct or indirect probe that takes longer counts as failed. 0.4 s is
    #: hundreds of loopback/LAN round trips, so only a stalled node misses it.
    probe_timeout: float = 0.4
    #: Peers asked to probe a node that missed a direct probe (SWIM's k);
    #: they tell a dead node from a broken link between two nodes.
    indirect_probes: int = 2
    #: How long a suspect may refute the suspicion before it is declared
    #: dead, up to 10 nodes and with no other node confirming it; it grows
    #: with log10(N), and falls to half as other nodes confirm (Lifeguard).
    suspicion_timeout: float = 1.2
    #: Dead or left peers and unreached seeds are retried this often, so a
    #: restarted node or a healed partition is found again.
    rejoin_interval: float = 2.0
    #: A forward (fill on a peer) waits at most this long for the reply, so a
    #: hung peer never stalls fill longer than this.
    forward_timeout: float = 1.0
    #: Timeout of drain/get/leave calls to peers.
    request_timeout: float = 1.0
    #: After the local bucket is full, peers believed to have room are tried
    #: in turn (one hop each, each at most once); this many may fail
    #: otherwise than by answering "full" (time out, error) before the fill
    #: gives up. "Full" answers do not count: they refresh a stale figure,
    #: so ClusterFullError means every peer believed to have room said no.
    max_attempts: int = 3
    #: Forwards to one peer are coalesced into batches of at most this many
    #: (fewer when their data is big: see the README). A receiver takes a
    #: batch in slices, letting its loop run every 0.2 ms, so a big one does
    #: not hold its own timers.
    batch_size: int = 1024
    #: Batches in flight to one peer at once: keeps a fast peer busy while
    #: the next batch fills up, and through this node's own pauses (a full
    #: garbage collection of a big heap takes tens of milliseconds).
    batch_concurrency: int = 8
    #: Request bodies above this size are refused with 413 before decoding.
    max_body: int = 4 * 1024 * 1024
    #: Signed requests whose timestamp is further from our clock are refused.
    max_clock_skew: float = 30.0
    #: On stop: how long pending tasks that no peer can take yet are offered
    #: again, and running tasks may finish, before the rest get on_panic.
    stop_grace: float = 5.0
    #: After a forward times out, how long the origin keeps asking that peer
    #: whether it took the batch before it gives up and raises
    #: PlacementUnknownError (the task is never placed twice).
    settle_timeout: float = 3.0
    #: A peer dead this long (same boot id: it may only be stalled) is
    #: presumed lost: origins report its tasks through on_tasks_lost and
    #: drains of them answer LOST. Until then they answer "unknown" (an
    #: error to retry), never NOT_FOUND. 30 s outlasts GC pauses, VM
    #: migrations and short partitions.
    lost_after: float = 30.0
    #: Dead and left peers are dropped from the member table (and from
    #: gossip and rejoin attempts) this long after they died or left.
    prune_after: float = 300.0
    #: Backups of each pending time-bomb kept on other nodes (0, 1 or 2;
    #: a bucket may override it). With k backups a task survives the crash
    #: of k nodes: a backup holder promotes it when its holder is proven
    #: gone or presumed lost. 0 (the default) keeps today's speed.
    replicas: int = 0
    #: With replicas: how long after a holder is declared dead (same boot id)
    #: its backups take its tasks over. None (the default): ``lost_after``,
    #: when it is presumed lost. 0 takes over at once, so a node that stays
    #: dead has its pending tasks pending again elsewhere within the
    #: detection time (about 2 s with the default timers); a holder wrongly
    #: declared dead (stalled, cut off) then has its tasks moved, and the
    #: start gate and takeover check keep each running once -- except in
    #: the rare cases the README's known limits name. At most ``lost_after``.
    promote_after: float | None = None
    #: With replicas: how long an origin waits, once a holder is proven gone
    #: or presumed lost, for backups to report that they took over its tasks
    #: before it reports the rest lost. Covers the spread between nodes'
    #: detection of the same failure (about one probe round).
    promote_grace: float = 5.0
    #: Where a fill goes while the node it is filled at has room. "local"
    #: (the default, GoBucket's rule): here, and only the overflow goes to
    #: peers. "balanced": here unless a peer drawn at random has more free
    #: room than this node by over 1% of the bucket's size; then on the
    #: better of two peers drawn at random -- so nodes fill evenly whichever
    #: of them the fills arrive at (at the cost of a round trip for the
    #: tasks that move). If no peer takes it, it stays here.
    placement: str = "local"
    #: Pack every filled task's data up front, even when it stays here, and
    #: refuse the fill with TypeError naming the type if it could not travel
    #: (overflow, handoff, backups). None (the default): whenever the group
    #: has peers (seeds given, or peers known), so such data fails at the
    #: first fill -- in tests -- not only under load or on a rolling restart.
    #: False lets local tasks hold anything; True checks a lone node too.
    check_payloads: bool | None = None

    def __post_init__(self) -> None:
        for name in ("probe_interval", "probe_timeout", "suspicion_timeout", "rejoin_interval",
                     "forward_timeout", "request_timeout", "max_clock_skew",
                     "settle_timeout", "lost_after", "prune_after", "promote_grace"):
            object.__setattr__(self, name, check_positive(name, getattr(self, name)))
        object.__setattr__(self, "stop_grace", check_delay("stop_grace", self.stop_grace))
        if self.promote_after is not None:
            object.__setattr__(self, "promote_after",
                               check_delay("promote_after", self.promote_after))
        _count("indirect_probes", self.indirect_probes, 0)
        _count("max_attempts", self.max_attempts, 1)
        _count("batch_size", self.batch_size, 1)
        _count("batch_concurrency", self.batch_concurrency, 1)
        _count("max_body", self.max_body, 1024)
        _replicas(self.replicas)
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(map(repr, PLACEMENTS))}, "
                             f"got {self.placement!r}")
        if self.check_payloads is not None and type(self.check_payloads) is not bool:
            raise ValueError(f"check_payloads must be None, True or False, "
                             f"got {self.check_payloads!r}")
        if self.prune_after < self.lost_after:
            raise ValueError(
                f"prune_after ({self.prune_after}) must be >= lost_after ({self.lost_after}): "
                "a dead peer's tasks are reported lost before it is forgotten")
        if self.promote_after is not None and self.promote_after > self.lost_after:
            raise ValueError(
                f"promote_after ({self.promote_after}) must be <= lost_after "
                f"({self.lost_after}): backups take tasks over before they are reported lost")
        if self.probe_timeout >= self.probe_interval * 2:
            raise ValueError(
                f"probe_timeout ({self.probe_timeout}) must be < 2 x probe_interval "
                f"({self.probe_interval}) or probes pile up")

    @classmethod
    def local(cls, **overrides: object) -> GroupConfig:
        """A fast preset for tests and single-host demos."""
        values: dict[str, object] = {
            "probe_interval": 0.1, "probe_timeout": 0.1, "suspicion_timeout": 0.3,
            "rejoin_interval": 0.3, "forward_timeout": 0.5, "request_timeout": 0.5,
            "stop_grace": 1.0, "settle_timeout": 1.0, "lost_after": 5.0, "prune_after": 30.0,
            "promote_grace": 1.5}
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
