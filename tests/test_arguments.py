"""Bad arguments to a group, a keyring or a client: a clear error naming the
argument, raised before anything starts or is sent."""

from __future__ import annotations

from typing import Any

import pytest

from gobucket_py import BucketConfig, GroupClient, TaskBucket, TaskBucketGroup
from gobucket_py.cluster.auth import Keyring


async def _noop(task: object) -> None:
    return None


def _buckets() -> dict[str, TaskBucket]:
    return {"jobs": TaskBucket(BucketConfig(life_span=60), _noop, name="jobs")}


@pytest.mark.parametrize(("kwargs", "error", "field"), [
    ({"insecure": "false"}, TypeError, "insecure"),  # a truthy string must not open the port
    ({"insecure": 1}, TypeError, "insecure"),
    ({"port_fallback": "yes"}, TypeError, "port_fallback"),
    ({"host": None}, TypeError, "host"),
    ({"secret": b"0123456789abcdef"}, TypeError, "secret"),
    ({"tls": "cert.pem"}, TypeError, "tls"),
    ({"transport": object()}, TypeError, "transport"),
    ({"advertise": ""}, ValueError, "advertise"),
    ({"advertise": "10.0.0.1:port"}, ValueError, "advertise"),
    ({"advertise": "10.0.0.1 :6666"}, ValueError, "advertise"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_bad_group_options_name_the_argument(kwargs: dict[str, Any], error: type[Exception],
                                             field: str) -> None:
    with pytest.raises(error, match=field):
        TaskBucketGroup(_buckets(), **kwargs)


def test_buckets_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match="buckets must be a mapping"):
        TaskBucketGroup([TaskBucket(BucketConfig(life_span=60), _noop, name="jobs")])  # type: ignore[arg-type]


@pytest.mark.parametrize("advertise", ["10.0.0.1:6666", "node-1.example:7000/gobucket",
                                       "10.0.0.1", "[::1]:6666"])
def test_good_advertise_forms_are_taken(advertise: str) -> None:
    group = TaskBucketGroup(_buckets(), advertise=advertise, port=0)
    assert group.transport.advertise == advertise  # type: ignore[attr-defined]


def test_a_base64_secret_is_one_secret_not_a_key_list() -> None:
    padded = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="  # ends with '=' like `openssl rand -base64`
    keyring = Keyring.parse(padded)
    assert keyring.primary == "k0"
    assert Keyring.parse("YWJjZGVmZ2hpams==").primary == "k0"
    # The key-list form is unchanged: the first key signs.
    rotating = Keyring.parse("new=0123456789ab,old=ba9876543210")
    assert rotating.primary == "new"


def test_a_half_key_list_is_refused_without_echoing_the_secret() -> None:
    with pytest.raises(ValueError, match="every entry of a key list") as caught:
        Keyring.parse("new=0123456789ab,leaked-secret-value")
    assert "leaked-secret-value" not in str(caught.value)


@pytest.mark.parametrize(("keys", "max_skew", "match"), [
    ({"k0": "0123456789ab"}, float("nan"), "max_skew"),
    ({"k0": "0123456789ab"}, 0, "max_skew"),
    ({"k0": "0123456789ab"}, True, "max_skew"),
    ({"clé": "0123456789ab"}, 30.0, "key id"),  # travels in a header: ASCII only
    ({"a b": "0123456789ab"}, 30.0, "key id"),
])
def test_bad_keyring_is_refused(keys: dict[str, str], max_skew: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Keyring(keys, max_skew=max_skew)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"address": "localhost"}, "address"),
    ({"address": ""}, "address"),
    ({"address": "127.0.0.1:6666", "timeout": 0}, "timeout"),
    ({"address": "127.0.0.1:6666", "timeout": float("inf")}, "timeout"),
    ({"address": "127.0.0.1:6666", "secret": ""}, "secret"),  # not silently unsigned
])
def test_bad_client_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GroupClient(**kwargs)


async def test_client_fill_refuses_a_task_type_that_is_not_a_task_type() -> None:
    client = GroupClient("127.0.0.1:1")  # never opened: the check comes before any send
    with pytest.raises(TypeError, match="task_type"):
        await client.fill("jobs", "t1", task_type="immediate")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="task_type"):
        await client.fill("jobs", "t1", task_type=1)  # type: ignore[arg-type]
