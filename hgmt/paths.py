"""Local paths and object-store URLs (gs://bucket/x, s3://...): a run's files may be either.

Files that may lie in an object store are read and written through `etils.epath`, as orbax
and TFDS do; a URL is never made absolute or `~`-expanded.
"""

from __future__ import annotations

import os


def is_url(path: str | os.PathLike) -> bool:
    """Whether `path` is an object-store URL (gs://, s3://, ...) rather than a local path."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (`~` expanded); a URL as it is."""
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def text(path: str | os.PathLike) -> str:
    """`path` as text that any JSON reader takes: a name that is not UTF-8 (Python's
    surrogate escapes of, say, a Latin-1 name) has its undecodable bytes written as `\\xNN`,
    where a lone surrogate escape would be refused by strict readers."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
