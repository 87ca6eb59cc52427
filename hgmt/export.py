"""Export the inference function of a checkpoint for serving.

    python -m hgmt.export --workdir=DIR --format=stablehlo --out_dir=OUTDIR [--step=N|best]
        [--config.<field>=<value> ...]
    python -m hgmt.export --workdir=DIR --format=savedmodel --out_dir=OUTDIR [--step=N|best]
        [--config.<field>=<value> ...]

The exported function maps an RGB image batch (B, R, R, 3) float32 with values on [0, 255]
(R = config.image_size, any B >= 1; the model normalises it) to the last stage's per-task
outputs {task: (B, R/4, R/4, C)} float32, parameters baked in.

- `stablehlo`: `jax.export` serialised StableHLO with a symbolic batch size, in
  OUTDIR/model.jaxexport; reload with `hgmt.inference.export.load_stablehlo(OUTDIR)` (or
  `jax.export.deserialize`) and call it, from JAX on CPU, CUDA or ROCm GPUs or TPU, whichever
  machine exported it (lowered for each: `hgmt.inference.export.PLATFORMS`).
- `savedmodel`: OUTDIR is a TensorFlow SavedModel made with jax2tf (native serialisation),
  signature `serving_default(images)`; reload with `tf.saved_model.load(OUTDIR)`, or convert
  it with `tf.lite.TFLiteConverter.from_saved_model(OUTDIR)`. TF Serving loads
  <base_path>/<version>/saved_model.pb: for it give --out_dir=<base>/1 (a version folder).
OUTDIR is a local folder (`~` expanded) or a gs:// URL, for either format: TensorFlow's file
systems write both where it is installed (it is with hgmt), and they have no s3://, so there
such a URL (or any scheme they lack) is refused before any work: export to a folder and copy
it. A host without TensorFlow exports stablehlo only, to a URL through fsspec (s3:// with s3fs
installed). OUTDIR must be new or empty, and not a symbolic link or a mount point (refused
before any work); a local export is written and run in `<OUTDIR>.partial-<random>` and renamed
to OUTDIR only then (moved into an OUTDIR that is an empty folder, hgmt.json last), so a
failure (a full disk: DiskFull, one line; Ctrl-C or SIGTERM) leaves neither, nor the missing
parent folders made for OUTDIR; in gs:// hgmt.json is written last
(`hgmt.inference.export.export`).
OUTDIR/hgmt.json records the tasks, input size, checkpoint step and folder (`best` for
--step=best, else `checkpoints`), normalisation, platforms, and how to decode each output: its
channels' meaning and the label pixels' place in the input.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from hgmt import cli, console, disk_space, paths
from hgmt.inference import export, trained_model

if TYPE_CHECKING:
    from absl import flags


def _define_flags(fv: flags.FlagValues) -> None:
    from absl import flags

    cli.define_workdir(fv)
    flags.DEFINE_enum("format", None, list(export.FORMATS), "artefact format", flag_values=fv,
                      required=True)
    flags.DEFINE_string("out_dir", None, "output directory, new or empty: the artefact and "
                        "hgmt.json go into it", flag_values=fv, required=True)
    cli.define_verbosity(fv)


def main(argv: list[str] | None = None) -> int:
    """The command of the module's docstring; -> exit status."""
    args, _ = cli.parse_on_workdir(_define_flags, argv, __doc__)
    with console.stoppable_console(args.verbosity, command=argv is None):
        return _run(args)


def _run(args: flags.FlagValues) -> int:
    """The export of `main`, its flags parsed and its console set up; -> exit status."""
    with cli.faults_in_one_line(*trained_model.RESTORE_FAULTS, NotADirectoryError,
                                FileExistsError, export.UnusableOutDir, disk_space.DiskFull,
                                export.TensorFlowTooOld,
                                traceback=args.verbosity >= 1):
        meta, shapes = export.export(args.workdir, args.format, args.out_dir,
                                     cli.checkpoint_step(args.step), args.config)
    print(json.dumps({"out_dir": paths.text(paths.absolute(args.out_dir)), "format": args.format,
                      "tasks": meta["tasks"], "step": meta["step"],
                      "checkpoint": meta["checkpoint"],
                      "output_shapes_for_batch_2": {t: list(s) for t, s in shapes.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
