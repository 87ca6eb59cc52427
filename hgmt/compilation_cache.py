"""JAX's persistent compilation cache, as hgmt's commands and tests use it."""

from __future__ import annotations

import os

from absl import flags

DEFAULT_PATH = "~/.cache/hgmt/jax"  # the commands' --compilation_cache and the tests'


def define_flag(fv: flags.FlagValues) -> None:
    """`--compilation_cache`, the flag of every command that compiles the model."""
    flags.DEFINE_string("compilation_cache", DEFAULT_PATH,
                        "JAX's persistent compilation cache, which every process of the run "
                        "enables: a rerun, a resumed job, a sweep's next run or an evaluation "
                        "of the same model loads its compiled steps instead of compiling them "
                        "again. In a multi-process run only process 0 writes to it and the "
                        "others compile every program on every run. Jobs that run at the same "
                        "time (a sweep's runs on several nodes) should each give their own "
                        "node-local folder: JAX writes an entry without a lock. '' disables "
                        "it. JAX reads it once a process, at its first compilation: a "
                        "command's main called again in one process (a notebook) keeps the "
                        "first.", flag_values=fv)


def enable(path: str) -> None:
    """Caches every XLA program jax compiles under `path` (`~` expanded), however short its
    compilation: a restarted run (resume, a rerun after a fault) and the tests then skip the
    hundreds of sub-second compilations of eager ops (parameter initialisation, host-side
    metrics), not only the train and evaluation steps. '' (the flag's off) leaves JAX's
    setting as it is."""
    if not path:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
