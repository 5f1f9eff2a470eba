"""Configuration objects: frozen dataclasses that validate themselves.

Every invalid value raises :class:`ValueError` naming the field, so a typo in a
deployment fails at start-up rather than at the first task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BucketConfig"]


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


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

    >>> BucketConfig(life_span=60, run_after=30)
    BucketConfig(life_span=60.0, run_after=30.0, max_bucket=1024, hook_timeout=30.0)
    """

    life_span: float
    run_after: float = 0.0
    max_bucket: int = 1024
    hook_timeout: float = 30.0

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
