"""Out of device memory: XLA's RESOURCE_EXHAUSTED turned into one error that names the settings.

A batch, image or model too large for the accelerator fails when XLA compiles the training step
(TPU: "Ran out of memory in memory space hbm. Used 18.3G of 15.5G hbm") or when the first step
allocates its buffers (GPU: "Out of memory while trying to allocate 34359738368 bytes"; CPU,
past the process's address-space limit such as `ulimit -v`: "Out of memory allocating
68719476736 bytes."), with a long allocation dump that says nothing about which setting to
change. `explained(config)` catches that error and raises `OutOfDeviceMemory`: the per-device
batch, the image size, the model's size, the memory XLA asked for and the device has (where
XLA or the device says), and the settings to lower. XLA's full message is logged as a verbose
line (`console.VERBOSE`), which the commands show only with `--verbosity=1`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator

import jax
import ml_collections

from hgmt import cli, console

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class OutOfDeviceMemory(RuntimeError):
    """The program does not fit in the accelerator's memory; the message names the settings."""


# XLA's wording of an allocation that does not fit (GPU and CPU clients, TPU compiler, GPU BFC
# allocator), for an out-of-memory error that reaches us as another type carrying its text.
_XLA_WORDING = re.compile(r"RESOURCE_EXHAUSTED: .*(?:Out of memory|Ran out of memory|"
                          r"Failed to allocate request for)")


# A JaxRuntimeError saying RESOURCE_EXHAUSTED about memory (XLA's forms above, and e.g. the
# TPU runtime's "Error allocating device buffer: Attempting to allocate 1.00G"), not another
# exhausted resource (a gRPC message over its size limit in a multi-host run).
_RUNTIME_MEMORY = re.compile(r"RESOURCE_EXHAUSTED.*(?:memory|allocat)", re.IGNORECASE | re.S)


def _xla_out_of_memory(error: BaseException) -> BaseException | None:
    """The link of `error`'s chain (itself, then each `__cause__`: an error a library raised
    from it) that is XLA's out-of-memory error, or None. Not `__context__`: an unrelated error
    raised while handling one is not it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        message = str(error)
        if isinstance(error, jax.errors.JaxRuntimeError):
            if _RUNTIME_MEMORY.search(message):
                return error
        elif _XLA_WORDING.search(message):
            return error
        error = error.__cause__
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is XLA's out-of-memory error (a JaxRuntimeError saying
    RESOURCE_EXHAUSTED), was raised from one (a library's own error wrapping it, as orbax's
    restore wraps what its reads raise), or carries its wording in another type ("Out of
    memory ..." re-raised as a ValueError). Disk and quota errors of orbax/tensorstore say
    RESOURCE_EXHAUSTED too, but as ValueError/OSError without that wording: they are not
    device memory."""
    return _xla_out_of_memory(error) is not None


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit[:1].upper()])


def amounts(message: str) -> tuple[int | None, int | None]:
    """(bytes the program asked for, bytes the device has) as XLA's message states them,
    None where it does not. Understands the TPU compiler's "Used 18.27G of 15.48G hbm", the GPU
    allocators' "Out of memory while trying to allocate N bytes" and "Failed to allocate
    request for 2.00GiB (2147483648B)", and the CPU client's "Out of memory allocating N
    bytes"."""
    used = re.search(r"Used ([\d.]+)([KMGT]?)i?B? of ([\d.]+)([KMGT]?)i?B? \w+", message)
    if used:
        return _bytes(used[1], used[2]), _bytes(used[3], used[4])
    asked = (re.search(r"allocat(?:e|ing) (\d+) bytes", message)
             or re.search(r"allocate request for [\d.]+\s*\w*\s*\((\d+)B\)", message))
    return (int(asked[1]) if asked else None), None


def device_limit() -> int | None:
    """Bytes of memory of this host's first device as its runtime reports it (GPU/TPU;
    None on the CPU, which reports none)."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001  (backends without memory statistics)
        return None
    return stats.get("bytes_limit")


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f} {unit}iB"
    return f"{n} B"


def parameter_count(config: ml_collections.ConfigDict) -> int | None:
    """The number of parameters of `config`'s model (shapes only, nothing allocated)."""
    try:
        from hgmt.models import create_model, variable_shapes
        from hgmt.tasks import heads, parse_tasks

        model = create_model(config.model, heads(parse_tasks(config.tasks)))
        shapes = variable_shapes(model, int(config.image_size))["params"]
    except Exception:  # noqa: BLE001  (the message is still useful without it)
        return None
    return sum(int(x.size) for x in jax.tree.leaves(shapes))


def explain(error: BaseException, config: ml_collections.ConfigDict, what: str,
            batch_field: str = "batch_size",
            batch_flag: tuple[str, int] | None = None, *,
            beside_train_state: bool = False) -> OutOfDeviceMemory:
    """The `OutOfDeviceMemory` for XLA's `error`, raised while `what` (e.g. 'while compiling
    or running the training step') with batches of `config[batch_field]` (global):
    `batch_size`, training, or `eval_batch_size`, an evaluation of trained weights, whose
    message names the batch and the compute dtype only (the image size and model are the
    checkpoint's; no optimizer state, but `beside_train_state`: the trainer's evaluations,
    which run while the train state is on the device). With
    `batch_flag` (the flag, its value) a command's flag sets the batch instead, run on JAX's
    default device with a trained checkpoint (hgmt.predict's --batch_size): the image size and
    model are the checkpoint's, so the message names the flag and the compute dtype only."""
    message = str(_xla_out_of_memory(error) or error)
    asked, has = amounts(message)
    has = has or device_limit()
    params = parameter_count(config)
    memory = (f"out of device memory {what}: XLA asked for {_size(asked)}, the device has "
              f"{_size(has)}.")
    dtype = config.model.get("dtype", "float32")
    if batch_flag is not None:
        flag, batch = batch_flag
        model = ("a model of unknown size" if params is None else
                 f"a model of {params / 1e6:.2f} M parameters ({_size(4 * params)} in "
                 f"float32)")
        return OutOfDeviceMemory(
            f"{memory} The program holds batches of {batch} crops ({flag}={batch}, on one "
            f"device) of {config.image_size} x {config.image_size} pixels and {model}, in "
            f"{dtype}, as the checkpoint's config sets them. Lower {flag}, or compute in "
            f"bfloat16 (--config.model.dtype=bfloat16)")
    devices = jax.device_count()
    batch = int(config[batch_field])
    training = batch_field == "batch_size"  # else an evaluation
    optimizer = (", times about 3 with the optimizer state" if training else
                 ", times about 3 with the optimizer state training holds beside it"
                 if beside_train_state else "")
    model = ("a model of unknown size" if params is None else
             f"a model of {params / 1e6:.2f} M parameters ({_size(4 * params)} in float32"
             f"{optimizer})")
    held = (f"{memory} The program holds a per-device batch of {batch // devices} "
            f"(config.{batch_field}={batch} over {devices} devices), {config.image_size} x "
            f"{config.image_size} images (config.image_size) and {model}, in {dtype}. ")
    verbose = "XLA's full message (the allocation dump) is logged with --verbosity=1"
    if not training:  # the model and image size are the checkpoint's
        return OutOfDeviceMemory(
            f"{held}Lower config.{batch_field} (or use more devices; any run takes a new "
            f"one), or compute in bfloat16 (config.model.dtype=bfloat16, which a resumed "
            f"training run takes only with {cli.RESUME_FLAG}). {verbose}")
    return OutOfDeviceMemory(
        f"{held}Lower config.{batch_field} (or use more devices), config.image_size, or the "
        f"model (config.model.features={config.model.features}, "
        f"config.model.num_stacks={config.model.num_stacks}), or compute in bfloat16 "
        f"(config.model.dtype=bfloat16); a run resumed from its checkpoints takes a new "
        f"batch size or dtype only with {cli.RESUME_FLAG}, and another model only in a new "
        f"--workdir. {verbose}")


def explain_variables(error: BaseException, nbytes: int) -> OutOfDeviceMemory:
    """The `OutOfDeviceMemory` for XLA's `error` raised while a checkpoint's variables
    (`nbytes` bytes) are put on the device, before any batch: no batch size or dtype helps
    (the variables are stored in float32), only the device's free memory."""
    asked, has = amounts(str(_xla_out_of_memory(error) or error))
    return OutOfDeviceMemory(
        f"out of device memory while placing the checkpoint's variables ({_size(nbytes)}) on "
        f"the device: XLA asked for {_size(asked)}, the device has "
        f"{_size(has or device_limit())}. The model alone does not fit beside what the "
        f"device already holds; free the device (another process may hold its memory), use "
        f"one with more memory, or run on the CPU (JAX_PLATFORMS=cpu)")


@contextlib.contextmanager
def _explained_by(explanation: Callable[[BaseException], OutOfDeviceMemory]) -> Iterator[None]:
    """Turns XLA's out-of-memory error raised inside into `explanation(error)`; XLA's full
    message is logged as a verbose line (`console.VERBOSE`)."""
    try:
        yield
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        logging.info("XLA's out-of-memory message in full:\n%s", _xla_out_of_memory(e),
                     extra=console.VERBOSE)
        raise explanation(e) from None


def explained(config: ml_collections.ConfigDict, what: str,
              batch_field: str = "batch_size",
              batch_flag: tuple[str, int] | None = None, *,
              beside_train_state: bool = False) -> contextlib.AbstractContextManager:
    """Turns XLA's out-of-memory error raised inside into `OutOfDeviceMemory` (see `explain`);
    XLA's full message is logged as a verbose line (`console.VERBOSE`)."""
    return _explained_by(lambda e: explain(e, config, what, batch_field, batch_flag,
                                           beside_train_state=beside_train_state))


def variables_explained(nbytes: int) -> contextlib.AbstractContextManager:
    """`explained` for putting a checkpoint's variables (`nbytes` bytes) on the device
    (`explain_variables`)."""
    return _explained_by(lambda e: explain_variables(e, nbytes))
