"""JAX's persistent compilation cache, as hgmt's commands and tests use it."""

from __future__ import annotations

import os

DEFAULT_PATH = "~/.cache/hgmt/jax"  # hgmt.main's --compilation_cache and the tests'


def enable(path: str) -> None:
    """Caches every XLA program jax compiles under `path` (`~` expanded), however short its
    compilation: a restarted run (resume, a rerun after a fault) and the tests then skip the
    hundreds of sub-second compilations of eager ops (parameter initialisation, host-side
    metrics), not only the train and evaluation steps."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
