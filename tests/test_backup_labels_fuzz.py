"""Randomized check of the backup words' labels (cluster/backups.py).

A backup holder keeps words about a primary's task (tombs, claims,
promotions, moves) by (bucket, id, primary), and labels a key with the primary's boot
its words are about, so they are not applied to another incarnation's
task. The invariant: a labelled key holds only words about that label's
incarnation (else a task could run twice, or a late copy of a started
task be kept, or a claim refuse a new incarnation's word for good); and a
key's stamp (the latest fill time, on the primary's clock, of the tasks its
words are about) is at least every word's, each of which named one (else a
word would not be applied to its own task). Random
tombs, notes, takeover checks (claims) and announcements with and without
boots, promotions, trims and expiry (small table limits), deletions, and
bequests from a leaving node to this one; a shadow records the boots of
the words written under each key since it last entered its table. (From a
helper's review of the labels; it also catches the two unsafe versions
that review found.)
"""

from __future__ import annotations

import asyncio
import random
import types
from typing import Any

import pytest

import gobucket_py.cluster.backups as backups_module
from gobucket_py.cluster.backups import Backups
from gobucket_py.cluster.membership import MemberState

pytestmark = pytest.mark.looptime

Key = tuple[str, str, str]
KEYS: list[Key] = [("j", str(i), p) for i in range(4) for p in ("n1", "n2")]
BOOTS: list[str | None] = ["A", "B", "C", None]
STAMPS: list[float | None] = [1.0, 2.0, 3.0, None]
#: A word: the incarnation and the stamp of the task it is about (None: not known).
Word = tuple[str | None, float | None]
TABLES = ("tombs", "claims", "promoted", "moved")
ASKERS = ("n7", "n8", "n9")


class Peer:
    """A member as the methods read it."""

    def __init__(self, node_id: str, boot: str) -> None:
        self.node_id, self.boot, self.addr = node_id, boot, node_id
        self.state = MemberState.ALIVE


def holder(name: str, max_body: int = 1024) -> Backups:
    """A holder alone; a small ``max_body`` cuts a bequest into many slices."""
    group = types.SimpleNamespace(node_id=name, boot_id=name + "-boot", running=True,
                                  buckets={}, config=types.SimpleNamespace(
                                      request_timeout=1, max_body=max_body),
                                  _routes=types.SimpleNamespace(get=lambda bucket, task_id: None))
    group._members = types.SimpleNamespace(members={}, header=lambda: {})
    return Backups(group)  # type: ignore[arg-type]


class Shadow:
    """The words (boot and stamp) written under each key since it entered its table."""

    def __init__(self, backups: Backups) -> None:
        self.backups = backups
        self.words: dict[str, dict[Key, set[Word]]] = {t: {} for t in TABLES}
        real = backups._tomb

        def tomb(key: Key, boot: str | None = None, stamp: float | None = None,
                 keep: float | None = None) -> None:
            fresh = key not in backups.tombs  # every tomb kept, and what it is about
            real(key, boot, stamp, keep)
            self.sync()
            self.wrote("tombs", key, (boot, stamp), fresh)

        backups._tomb = tomb  # type: ignore[method-assign]

    def sync(self) -> None:
        for t in TABLES:
            kept = getattr(self.backups, t)
            for key in [k for k in self.words[t] if k not in kept]:
                del self.words[t][key]

    def wrote(self, table: str, key: Key, word: Word, fresh: bool) -> None:
        if fresh:
            self.words[table].pop(key, None)
        self.words[table].setdefault(key, set()).add(word)

    def check(self, where: object) -> None:
        self.sync()
        for t in TABLES:
            for key in getattr(self.backups, t):
                label = self.backups._boot(t, key)
                upto = self.backups.stamps.get(t, {}).get(key)
                words = self.words[t].get(key, {(None, None)})
                others = {boot for boot, _ in words} - {label}
                assert label is None or not others, (where, t, key, label, others)
                assert upto is None or (label is not None and all(
                    stamp is not None and stamp <= upto for _, stamp in words)), (
                        where, t, key, label, upto, words)


def trimmed_before(table: dict[Key, Any], key: Key) -> bool:
    """Is ``key`` absent from ``table`` once a write's trim (the oldest half,
    at the limit) has run?"""
    order = list(table)
    kept = order[backups_module._MAX_TOMBS // 2:] if len(order) >= backups_module._MAX_TOMBS \
        else order
    return key not in kept


def promote(shadow: Shadow, key: Key, boot: str, stamp: float | None) -> None:
    b = shadow.backups
    shadow.sync()
    fresh = key not in b.promoted
    b._about("promoted", key, boot, stamp)  # as _take_over does
    b.promoted[key] = asyncio.get_running_loop().time()
    shadow.wrote("promoted", key, (boot, stamp), fresh)


def claim(shadow: Shadow, rnd: random.Random, key: Key, boot: str | None,
          stamp: float | None) -> None:
    """A holder's takeover check: the incarnation named per task (``boots``,
    as now) or for the whole check (``boot``, as an earlier version), and
    the task's stamp where known."""
    b = shadow.backups
    shadow.sync()
    fresh = key not in b.claims
    per_task = boot is not None and rnd.random() < 0.6
    answers = b.check(rnd.choice(ASKERS), key[2], None if per_task else boot,
                      [[key[0], key[1]]], "x", [boot] if per_task else None,
                      None if stamp is None and rnd.random() < 0.5 else [stamp])
    shadow.sync()
    if answers == ["ok"]:
        shadow.wrote("claims", key, (boot, stamp), fresh)


def announce(shadow: Shadow, rnd: random.Random, primary: str) -> None:
    b = shadow.backups
    keys = [k for k in (rnd.choice(KEYS) for _ in range(rnd.randrange(1, 4))) if k[2] == primary]
    boots = [rnd.choice(BOOTS[:3]) for _ in keys]
    stamps = [rnd.choice(STAMPS) for _ in keys]
    given = rnd.random() < 0.6
    fresh = {k for k in keys if trimmed_before(b.moved, k)}
    b.took_over(Peer("n9", "x"), primary, [[k[0], k[1]] for k in keys], [],  # type: ignore[arg-type]
                boots if given else None, stamps if given else None)  # type: ignore[arg-type]
    shadow.sync()
    for key, boot, stamp in zip(keys, boots, stamps, strict=True):
        shadow.wrote("moved", key, (boot, stamp) if given else (None, None), key in fresh)
        fresh.discard(key)


async def bequest(heir: Shadow, rnd: random.Random) -> None:
    """A leaving node with random words passes them on to the heir."""
    leaver = Shadow(holder("leaver"))
    for _ in range(rnd.randrange(10)):
        key, boot, table = rnd.choice(KEYS), rnd.choice(BOOTS), rnd.choice(TABLES)
        stamp = rnd.choice(STAMPS)
        if table == "tombs":
            leaver.backups._tomb(key, boot, stamp)
        elif table == "claims":
            claim(leaver, rnd, key, boot, stamp)
        elif table == "moved":
            fresh = trimmed_before(leaver.backups.moved, key)
            leaver.backups.took_over(Peer("n8", "y"), key[2],  # type: ignore[arg-type]
                                     [[key[0], key[1]]], [], None if boot is None else [boot],
                                     None if boot is None else [stamp])
            leaver.sync()
            leaver.wrote("moved", key, (boot, stamp if boot is not None else None), fresh)
        elif boot is not None:
            promote(leaver, key, boot, stamp)
    leaver.check("leaver")
    sent: list[dict[str, Any]] = []

    async def call(addr: str, kind: Any, message: dict[str, Any], timeout: float
                   ) -> dict[str, Any]:
        sent.append(message)
        return {}

    group = leaver.backups.group
    group.transport = types.SimpleNamespace(call=call)  # type: ignore[assignment]
    group._members.members = {"heir": Peer("heir", "heir-boot")}  # type: ignore[assignment]
    await leaver.backups.bequeath()
    if not sent:
        return
    recent_moves = [k for k, _ in list(leaver.backups.moved.items())[-backups_module._BEQUEST:]]
    recent_promotions = list(leaver.backups.promoted)[-backups_module._BEQUEST:]
    for message in sent:  # (in slices: one kind of word each, as the heir gets them)
        inherit(heir, leaver, message["inherit"], recent_moves, recent_promotions)


def inherit(heir: Shadow, leaver: Shadow, inherit: dict[str, Any], recent_moves: list[Key],
            recent_promotions: list[Key]) -> None:
    truth: dict[Key, set[Word]] = {}
    nothing: set[Word] = {(None, None)}
    for row in inherit["moved"]:
        key = (row[0], row[1], row[2])
        words = truth.setdefault(key, set())
        if key in recent_moves:
            words |= leaver.words["moved"].get(key, nothing)
        if key in recent_promotions:
            words |= leaver.words["promoted"].get(key, nothing)
    tombs = {(r[0], r[1], r[2]): leaver.words["tombs"].get((r[0], r[1], r[2]), nothing)
             for r in inherit["tombs"]}
    claims = {(r[0], r[1], r[2]): leaver.words["claims"].get((r[0], r[1], r[2]), nothing)
              for r in inherit["claims"]}
    b = heir.backups
    before_moved = set(b.moved)
    before_claims = set(b.claims)
    b.inherit(inherit)  # (its tombs are recorded as kept, with the boot given)
    heir.sync()
    for key, words in claims.items():
        if key in b.claims:
            for word in words:
                heir.wrote("claims", key, word, key not in before_claims)
                before_claims.add(key)
    for key, words in truth.items():
        if key in b.moved:
            for word in words:
                heir.wrote("moved", key, word, key not in before_moved)
                before_moved.add(key)
    for key, words in tombs.items():  # and with what they were about
        if key in b.tombs:
            for word in words:
                heir.wrote("tombs", key, word, False)


async def step(shadow: Shadow, rnd: random.Random) -> None:
    b = shadow.backups
    key, boot, stamp = rnd.choice(KEYS), rnd.choice(BOOTS), rnd.choice(STAMPS)
    await asyncio.sleep(rnd.choice([0, 0, 1, 3]))
    op = rnd.randrange(8)
    if op == 0:
        b._tomb(key, boot, stamp)
    elif op == 1:
        announce(shadow, rnd, key[2])
    elif op == 2 and boot is not None:
        promote(shadow, key, boot, stamp)
    elif op == 3:  # expiry and trims
        if rnd.random() < 0.5:
            b.promoted = {k: t for k, t in b.promoted.items() if rnd.random() < 0.5}
        else:
            for gone in [k for k in b.moved if rnd.random() < 0.3]:
                del b.moved[gone]
    elif op == 4:  # the primary's note: a tomb unless a word answers first
        incarnation = rnd.choice(BOOTS[:3])
        assert incarnation is not None
        b.note(Peer(key[2], incarnation), [["started", key[0], key[1]]],  # type: ignore[arg-type]
               None if stamp is None and rnd.random() < 0.5 else [stamp])
    elif op == 5:
        await bequest(shadow, rnd)
    elif op == 6:
        claim(shadow, rnd, key, boot, stamp)
    elif op == 7:  # a claim's holder lets it go, or the table is trimmed
        if rnd.random() < 0.5:
            b.took_over(Peer(rnd.choice(ASKERS), "x"), key[2], [],  # type: ignore[arg-type]
                        [[key[0], key[1]]])
        else:
            for gone in [k for k in b.claims if rnd.random() < 0.3]:
                del b.claims[gone]


@pytest.mark.parametrize("first", [0, 100, 200])
async def test_a_labelled_key_holds_only_words_about_its_incarnation(
        first: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backups_module, "_MAX_TOMBS", 6)
    monkeypatch.setattr(backups_module, "TOMB_KEEP", 5.0)
    monkeypatch.setattr(backups_module, "_BEQUEST", 4)
    for seed in range(first, first + 100):
        rnd = random.Random(seed)
        shadow = Shadow(holder("h"))
        for index in range(60):
            await step(shadow, rnd)
            shadow.check((seed, index))
