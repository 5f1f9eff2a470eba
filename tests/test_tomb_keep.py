"""How long a backup holder keeps a primary's word that a task started or
was drained (a tombstone, cluster/backups.py): ``TOMB_KEEP`` past the task's
deadline where the primary said when that is (word left for a silent holder:
its stale backup of the task lives until its deadline, and its takeover check
must still find the word), else ``TOMB_KEEP`` (the cluster-level cases are in
test_replicas.py). One holder, its loop clock faked; no network.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gobucket_py.cluster.backups import TOMB_KEEP
from gobucket_py.errors import ProtocolError

from .test_backup_labels_fuzz import Peer, holder

pytestmark = pytest.mark.looptime

SENDER = Peer("n1", "boot-1")


def key(task_id: str) -> tuple[str, str, str]:
    return ("jobs", task_id, "n1")


async def test_a_note_naming_a_long_life_keeps_the_word_past_tomb_keep() -> None:
    b = holder("h")
    start = asyncio.get_running_loop().time()
    assert b.note(SENDER, [["tomb", "jobs", "long"], ["started", "jobs", "short"],  # type: ignore[arg-type]
                           ["drop", "jobs", "unsaid"]], None, [3000.0, 10.0, None]) == ["ok"] * 3
    assert b.tomb_until == {key("long"): start + 3000.0 + TOMB_KEEP,
                            key("short"): start + 10.0 + TOMB_KEEP}
    await asyncio.sleep(TOMB_KEEP)
    b._tomb(key("new0"))  # (prunes)
    assert key("unsaid") not in b.tombs and key("short") in b.tombs
    await asyncio.sleep(TOMB_KEEP)  # (kept on at 600 s: looked at again 600 s later)
    b._tomb(key("new1"))
    assert key("short") not in b.tombs and key("long") in b.tombs
    for tick in range(2, 5):  # newer words prune the old ones each time
        await asyncio.sleep(TOMB_KEEP)
        b._tomb(key(f"new{tick}"))
        assert key("long") in b.tombs, tick
    await asyncio.sleep(TOMB_KEEP)  # 3600 s: its deadline and TOMB_KEEP are past
    b._tomb(key("newest"))
    assert key("long") not in b.tombs and set(b.tomb_until) <= set(b.tombs)


async def test_a_later_word_of_the_same_key_never_shortens_it() -> None:
    b = holder("h")
    start = asyncio.get_running_loop().time()
    b.note(SENDER, [["tomb", "jobs", "t"]], None, [3000.0])  # type: ignore[arg-type]
    b.note(SENDER, [["drop", "jobs", "t"]], None, [5.0])  # type: ignore[arg-type]
    b.note(SENDER, [["drop", "jobs", "t"]])  # type: ignore[arg-type]
    assert b.tomb_until == {key("t"): start + 3000.0 + TOMB_KEEP}
    await asyncio.sleep(4000)
    b.note(SENDER, [["drop", "jobs", "t"]], None, [5.0])  # type: ignore[arg-type]
    assert b.tomb_until == {key("t"): start + 4000.0 + 5.0 + TOMB_KEEP}


async def test_a_trimmed_table_forgets_the_keep_of_the_words_it_drops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gobucket_py.cluster.backups as backups_module
    monkeypatch.setattr(backups_module, "_MAX_TOMBS", 4)
    b = holder("h")
    b.note(SENDER, [["tomb", "jobs", str(i)] for i in range(4)], None,  # type: ignore[arg-type]
           [5000.0] * 4)
    b._tomb(key("more"))  # at the limit: the oldest half goes, however long it was kept
    assert set(b.tomb_until) == {key("2"), key("3")} and set(b.tomb_until) <= set(b.tombs)
    b._tomb(key("x"))
    assert list(b.tombs) == [key("2"), key("3"), key("more"), key("x")]
    b._tomb(key("2"))  # trimmed (the oldest half) and written again: it keeps its time
    assert list(b.tombs) == [key("more"), key("x"), key("2")]
    assert set(b.tomb_until) == {key("2")}


async def test_a_leaving_node_passes_the_keep_on() -> None:
    b, heir = holder("leaver"), holder("heir")
    start = asyncio.get_running_loop().time()
    b.note(SENDER, [["tomb", "jobs", "long"], ["tomb", "jobs", "short"]], None,  # type: ignore[arg-type]
           [3000.0, 10.0])
    await asyncio.sleep(2 * TOMB_KEEP)
    b._tomb(key("new"))
    sent: list[dict[str, Any]] = []

    async def call(addr: str, kind: Any, message: dict[str, Any], timeout: float) -> Any:
        sent.append(message)
        return {}

    b.group.transport = type("T", (), {"call": staticmethod(call)})()  # type: ignore[assignment]
    b.group._members.members = {"heir": Peer("heir", "heir-boot")}  # type: ignore[assignment]
    await b.bequeath()
    assert len(sent) == 2  # (max_body 1 KiB here: a slice per tomb)
    for message in sent:
        heir.inherit(message["inherit"])
    assert set(heir.tombs) == {key("long"), key("new")}
    assert heir.tomb_until == {key("long"): pytest.approx(start + 3000.0 + TOMB_KEEP)}
    assert start + 3000.0 + TOMB_KEEP > asyncio.get_running_loop().time() + TOMB_KEEP
    heir.inherit({"tombs": [["jobs", "old", "n1"]]})  # an earlier version's: TOMB_KEEP
    assert key("old") in heir.tombs and key("old") not in heir.tomb_until


@pytest.mark.parametrize("bad", [[1.0], ["x"], [float("nan"), 1.0], 3.0])
async def test_malformed_lives_or_keeps_are_refused_and_change_nothing(bad: object) -> None:
    b = holder("h")
    with pytest.raises(ProtocolError, match="lives"):
        b.note(SENDER, [["tomb", "jobs", "x"], ["tomb", "jobs", "y"]], None,  # type: ignore[arg-type]
               bad)
    with pytest.raises(ProtocolError, match="keep"):
        b.inherit({"tombs": [["jobs", "x", "n1"], ["jobs", "y", "n1"]], "keep": bad})
    assert not b.tombs and not b.tomb_until
