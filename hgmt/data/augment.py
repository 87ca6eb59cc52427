"""The training augmentation's distributions (`Augment`): the defaults docs/surreal_format.md
quotes, and `config.augment`'s fields and ranges. Imported by the configs, so it imports
nothing heavier than numpy."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Augment:
    """The training augmentation's distributions (the values docs/surreal_format.md quotes);
    `Augment.none()` for evaluation."""

    # scale = 2 ** clip(N(0, scale_sigma), -scale_clip, scale_clip), times the window's side
    scale_sigma: float = 0.25
    scale_clip: float = 0.5
    # rotation = clip(N(0, rotate_sigma), -rotate_clip, rotate_clip) degrees, with probability
    # rotate_p (else 0)
    rotate_sigma: float = 30.0
    rotate_clip: float = 60.0
    rotate_p: float = 0.4
    gain: tuple[float, float] = (0.6, 1.4)  # per-channel colour gain ~ U(gain[0], gain[1])
    flip_p: float = 0.5  # the probability of a horizontal flip (left/right swapped)

    @staticmethod
    def none() -> Augment:
        """No augmentation: unit scale, no rotation, gain or flip."""
        return Augment(scale_sigma=0.0, rotate_sigma=0.0, rotate_p=0.0, gain=(1.0, 1.0),
                       flip_p=0.0)

    def config_fields(self) -> dict[str, float]:
        """These distributions as the fields of `config.augment` (the gain's bounds apart:
        gain_min, gain_max)."""
        fields = dataclasses.asdict(self)
        low, high = fields.pop("gain")
        return {**fields, "gain_min": low, "gain_max": high}

    @staticmethod
    def from_config(fields: Mapping[str, Any]) -> Augment:
        """The Augment of `config.augment` (`config_fields`' names); ValueError naming the
        field and its range for a value that is not finite, a spread or bound below 0, a
        probability outside [0, 1], or a gain range that is not 0 < gain_min <= gain_max."""
        fields = dict(fields)
        expected = set(Augment().config_fields())
        if set(fields) != expected:
            raise ValueError(f"config.augment has the fields {', '.join(sorted(fields))}; "
                             f"expected {', '.join(sorted(expected))}")
        for name, value in fields.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(
                    value) or value < 0:
                raise ValueError(f"config.augment.{name}={value!r} must be a finite number >= 0")
        for name in ("rotate_p", "flip_p"):
            if fields[name] > 1:
                raise ValueError(f"config.augment.{name}={fields[name]}: a probability above 1; "
                                 f"give one in [0, 1]")
        low, high = fields.pop("gain_min"), fields.pop("gain_max")
        if not 0 < low <= high:
            raise ValueError(f"config.augment.gain_min={low} and gain_max={high} must satisfy "
                             f"0 < gain_min <= gain_max (1 and 1: no colour change)")
        return Augment(**{k: float(v) for k, v in fields.items()},
                       gain=(float(low), float(high)))
