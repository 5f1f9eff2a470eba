"""The lateness bench's split of a late fire into the machine's pauses and
the rest (``bench.local._alone``): the figure that tells a spike of ours from
one of the VM's (correctness only; timings belong to ``python -m bench local``)."""

from __future__ import annotations

from array import array

import pytest

from bench.local import PAUSE, _alone


def fires(*pairs: tuple[float, float]) -> array[float]:
    out = array("d")
    for due, fired in pairs:
        out.extend((due, fired))
    return out


def test_no_late_fire_is_at_most_the_threshold() -> None:
    assert _alone(fires(), [(1.0, 1.5)]) == PAUSE


def test_a_late_fire_with_no_pause_of_the_machine_is_all_ours() -> None:
    assert _alone(fires((10.0, 10.040)), [(20.0, 20.030)]) == pytest.approx(0.040)


def test_a_pause_covering_the_fire_explains_it() -> None:
    # The canary was due at 9.999 and woke at 10.050: the whole fire is in it.
    assert _alone(fires((10.0, 10.040)), [(9.999, 10.050)]) == PAUSE


def test_a_partial_pause_leaves_the_rest() -> None:
    # 40 ms late; the canary paused from 10.010 (widened by its 1 ms period
    # to 10.009) to 10.020: 29 ms of it are not the machine's.
    assert _alone(fires((10.0, 10.040)), [(10.010, 10.020)]) == pytest.approx(0.029)


def test_overlapping_pauses_are_not_counted_twice() -> None:
    # Two of the canary's samples, 1 ms apart, widened: one span 10.000-10.030.
    assert _alone(fires((10.0, 10.040)), [(10.001, 10.020), (10.020, 10.030)]
                  ) == pytest.approx(0.010)


def test_the_worst_fire_is_reported() -> None:
    late = fires((1.0, 1.012), (5.0, 5.030), (8.0, 8.004))
    # 5.0-5.030 less the pause to 5.020 leaves 10 ms: the 12 ms at 1.0 is worse.
    assert _alone(late, [(4.9, 5.02)]) == pytest.approx(0.012)
    assert _alone(late, []) == pytest.approx(0.030)
