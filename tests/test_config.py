from __future__ import annotations

import pytest

from gobucket_py import BucketConfig, GroupConfig


def test_defaults_and_coercion() -> None:
    cfg = BucketConfig(life_span=5, run_after=1)
    assert cfg == BucketConfig(life_span=5.0, run_after=1.0, max_bucket=1024, hook_timeout=30.0)
    assert isinstance(cfg.life_span, float)
    with pytest.raises(AttributeError):
        cfg.life_span = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"life_span": 0}, "life_span"),
        ({"life_span": -1}, "life_span"),
        ({"life_span": float("nan")}, "life_span"),
        ({"life_span": float("inf")}, "life_span"),
        ({"life_span": "5"}, "life_span"),
        ({"life_span": True}, "life_span"),
        ({"life_span": 10**400}, "life_span"),  # beyond a float: ValueError, not OverflowError
        ({"life_span": 5, "run_after": -0.1}, "run_after"),
        ({"life_span": 5, "run_after": 5}, "run_after"),
        ({"life_span": 5, "run_after": 6}, "run_after"),
        ({"life_span": 5, "max_bucket": 0}, "max_bucket"),
        ({"life_span": 5, "max_bucket": 1.5}, "max_bucket"),
        ({"life_span": 5, "max_bucket": True}, "max_bucket"),
        ({"life_span": 5, "hook_timeout": 0}, "hook_timeout"),
        ({"life_span": 5, "hook_timeout": -2}, "hook_timeout"),
    ],
)
def test_invalid_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BucketConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"promote_after": -1}, "promote_after"),
        ({"promote_after": float("nan")}, "promote_after"),
        ({"promote_after": 31.0}, "promote_after"),  # above lost_after (30 s)
        ({"lost_after": 0}, "lost_after"),
        ({"replicas": 3}, "replicas"),
        ({"placement": "spread"}, "placement"),
        ({"placement": None}, "placement"),
        ({"lost_after": 60.0, "prune_after": 30.0}, "prune_after"),
        ({"lost_after": 10**400}, "lost_after"),
    ],
)
def test_invalid_group_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        GroupConfig(**kwargs)  # type: ignore[arg-type]


def test_promote_after_defaults_to_lost_after_and_may_be_sooner() -> None:
    assert GroupConfig().promote_after is None
    assert GroupConfig(promote_after=0).promote_after == 0.0
    assert GroupConfig(promote_after=10.0).promote_after == 10.0
