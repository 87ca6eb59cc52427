"""Per-step training metrics that stay on the device until the trainer needs them, and the
time of a log interval spent training.

Copying each step's losses to the host makes the host wait for that step, so JAX cannot queue
the next one and an accelerator idles while the host logs. The trainer instead appends each
step's (device) metrics here and calls `check()` only at log steps and before every checkpoint:
one transfer for all steps since the last check, then a finiteness check of every one of them,
so a non-finite loss is still attributed to its exact step and task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class NonFinite:
    """The first step whose metrics were not finite, among the steps `first..last` checked."""

    step: int
    tasks: list[str]
    metrics: dict[str, float]
    first: int
    last: int


class StepMetrics:
    """The train steps' metrics between two logs: kept on the device as the steps run
    (`append`), checked for non-finite values on the host (`check`), averaged (`pop_means`)."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, dict]] = []  # (step, device metrics), not yet checked
        self._checked: list[dict[str, float]] = []  # host values since the last `pop_means`

    def append(self, step: int, metrics: dict) -> None:
        """Keeps a step's metrics (device arrays (devices,), one value per device) without
        waiting."""
        self._pending.append((step, metrics))

    def check(self) -> NonFinite | None:
        """Copies the pending metrics to the host and returns the first non-finite step, if
        any (the metrics are `pmean`s, so each value is every device's: this process's first
        device's is read)."""
        if not self._pending:
            return None
        steps = [step for step, _ in self._pending]
        values = jax.device_get([{k: v.addressable_shards[0].data for k, v in m.items()}
                                 for _, m in self._pending])
        self._pending.clear()
        for step, metrics in zip(steps, values, strict=True):
            host = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in metrics.items()}
            bad = [k.split("/", 1)[-1] for k, v in host.items() if not np.isfinite(v)]
            if bad:
                return NonFinite(step, bad, host, steps[0], steps[-1])
            self._checked.append(host)
        return None

    def pop_means(self) -> dict[str, float]:
        """Means over the checked steps since the last call (call `check()` first)."""
        checked, self._checked = self._checked, []
        return {k: float(np.mean([m[k] for m in checked])) for k in checked[0]} if checked \
            else {}


class Interval:
    """A log interval's time: since `restart(step)`, the wall time less the time `set_apart`
    (evaluations, checkpoint saves), so that img/s, the data wait and the ETA count training
    only; `wait` and `idle` (seconds, added by the trainer) are the time the step waited for
    its batch and the part of it the device had nothing queued."""

    def __init__(self, step: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.restart(step)

    def restart(self, step: int) -> None:
        """Starts a new interval at `step`, its times at 0."""
        self.step, self.start = step, self.clock()
        self.wait = self.idle = self.apart = 0.0

    @contextlib.contextmanager
    def set_apart(self) -> Iterator[None]:
        """Leaves the time spent in the `with` block out of the interval's training time."""
        t = self.clock()
        try:
            yield
        finally:
            self.apart += self.clock() - t

    def training_time(self) -> float:
        """Seconds of the interval spent training."""
        return self.clock() - self.start - self.apart


@dataclasses.dataclass(frozen=True)
class Pace:
    """What a log line says of the speed: `img_per_s`, the shares of the training time the host
    waited for a batch (`data_wait`) and the device had nothing queued (`data_idle`), and
    `eta_s`, seconds to the last step. None where the interval's time is mostly compilation."""

    img_per_s: float | None
    data_wait: float | None
    data_idle: float | None
    eta_s: float | None


def pace(*, steps: int, batch_size: int, training_s: float, wait_s: float, idle_s: float,
         steps_left: int, steps_timed: int, timed_s: float, compiled: bool) -> Pace:
    """The `Pace` of a log interval of `steps` steps of `batch_size` images that trained for
    `training_s` seconds (evaluations and saves left out, `Interval`), of which the host
    waited `wait_s` for data and the device idled `idle_s`; the ETA is `steps_left` steps at
    the wall time per step of the `steps_timed` steps in `timed_s` seconds since the ETA's
    clock started. An interval that `compiled` (a first step that logs) has no rates, and an
    ETA only when none is left to run (0): the compilation would make them wrong."""
    if compiled:
        return Pace(None, None, None, None if steps_left else 0.0)
    return Pace(img_per_s=steps * batch_size / training_s, data_wait=wait_s / training_s,
                data_idle=idle_s / training_s, eta_s=steps_left * timed_s / steps_timed)
