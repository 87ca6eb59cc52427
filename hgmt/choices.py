"""The error of a value outside its choices, worded once for every layer (a config field, a
flag, a protocol name): `not_one_of`."""

from __future__ import annotations

from collections.abc import Iterable


def not_one_of(given: str, choices: Iterable[object]) -> ValueError:
    """The error of a value outside its choices, in hgmt's one wording of it: `<given>: choose
    one of a, b, c`, `given` naming the thing and its value (e.g. "config.model.dtype='fp8'")."""
    return ValueError(f"{given}: choose one of {', '.join(str(c) for c in choices)}")
