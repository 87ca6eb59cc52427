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
