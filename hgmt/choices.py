"""The error of a value outside its choices, worded once for every layer (a config field, a
flag, a protocol name): `not_one_of`; of a list flag's values, `not_some_of`."""

from __future__ import annotations

from collections.abc import Iterable


def not_one_of(given: str, choices: Iterable[object]) -> ValueError:
    """The error of a value outside its choices, in hgmt's one wording of it: `<given>: choose
    one of a, b, c`, `given` naming the thing and its value (e.g. "config.model.dtype='fp8'")."""
    return ValueError(f"{given}: choose one of {', '.join(str(c) for c in choices)}")


def not_some_of(given: str, name: str, unknown: Iterable[object],
                choices: Iterable[object]) -> ValueError:
    """The error of a comma-separated list flag some of whose values are outside its choices:
    `<given>: no <name> 'x', 'y'; give some of a, b, c, comma-separated`, `given` the flag
    and its value (e.g. "--splits=test,val"), `unknown` the values outside `choices`."""
    return ValueError(f"{given}: no {name} {', '.join(map(repr, unknown))}; give some of "
                      f"{', '.join(str(c) for c in choices)}, comma-separated")
