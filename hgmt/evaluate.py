"""Evaluate a checkpoint of a training workdir on a split of its dataset: by default on the
frames, number of examples, flip setting and metric protocol of its training config's test
evaluator.

    python -m hgmt.evaluate --workdir=DIR [--step=N|best] [--split=test] [--frames=middle]
        [--max_examples=0] [--flip] [--protocol=hgmt|bodynet|surreal] [--out_file=FILE.json]
        [--config.<field>=<value> ...]

Evaluates the latest (or given) checkpoint for the tasks it was trained on and writes JSON plus
a Markdown table (and each task's extra pictures, e.g. the PCKh curve); prints the table,
then a JSON line (the workdir, the JSON written, the step, the headline numbers).
`--frames` selects the frames of each clip (`middle` is SURREAL's test protocol). The default
file name says the checkpoint and the settings that differ from the test protocol's
(`workdirs.evaluation_file`), so evaluations of other settings do not replace each other.
`--protocol` picks the metric definitions (docs/metrics.md): `hgmt`'s own, or `bodynet` /
`surreal` (what those papers' code computes, to set a run beside their published tables); the
JSON records the protocol of the run and of each task's numbers; docs/metrics.md says how to
set a SURREAL run beside a published number (its settings, and the key for each number).
`--flip` averages each prediction with that of the mirrored image (left/right channels swapped
back).
`--step=best` on the test split warns when the best checkpoint was chosen on clips of the test
split (`best_choice_warning`): SURREAL's val clips are all test clips.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from hgmt import cli, compilation_cache, console, paths, run_config, workdirs
from hgmt.data import eval_data, records
from hgmt.evaluation import evaluator, markdown, protocols, report_files
from hgmt.inference import trained_model
from hgmt.tasks import check_loss_weights, config_tasks
from hgmt.training import config_check, device_memory, eval_settings, loop

if TYPE_CHECKING:
    import ml_collections
    from absl import flags


def _define_flags(fv: flags.FlagValues) -> None:
    from absl import flags

    cli.define_workdir(fv)
    flags.DEFINE_enum("split", "test", ["test", "validation", "train"], "split to evaluate",
                      flag_values=fv)
    flags.DEFINE_string("frames", None, "frames of each clip: middle (SURREAL's test "
                        "protocol), all, or everyK; default: the training config's test "
                        "evaluator's", flag_values=fv)
    flags.DEFINE_integer("max_examples", None, "at most this many frames (0: all); default: "
                         "the training config's test evaluator's", flag_values=fv,
                         lower_bound=0)
    flags.DEFINE_bool("flip", None, "average with the mirrored image; default: the training "
                      "config's test evaluator's", flag_values=fv)
    flags.DEFINE_enum("protocol", None, list(protocols.PROTOCOLS),
                      "metric definitions: hgmt's own, or what BodyNet's / SURREAL's code "
                      "computes (docs/metrics.md); default: the training config's test "
                      "evaluator's (hgmt in configs/default.py, the reference code's in "
                      "configs/reference.py)", flag_values=fv)
    cli.define_verbosity(fv)
    compilation_cache.define_flag(fv)
    flags.DEFINE_string("out_file", None, "JSON path (default: in the workdir, named after "
                        "the split, the checkpoint and the settings that differ from the test "
                        "protocol's, as hgmt/workdirs.py lists); a .md table is written beside "
                        "it", flag_values=fv)


def main(argv: list[str] | None = None) -> int:
    """The command of the module's docstring; -> exit status."""
    args, _ = cli.parse_on_workdir(_define_flags, argv, __doc__)
    step_arg = cli.checkpoint_step(args.step)
    # The config's evaluators as the trainer checks them (--config.evals.* overrides too),
    # and the protocol asked for at the model's label size, before a checkpoint is read.
    with cli.faults_in_one_line(ValueError):
        weights = check_loss_weights(args.config, config_tasks(args.config))
        records.check_dataset_name(args.config.dataset)
        eval_settings.check_evals(args.config, weights, label_size=False)
        config_check.check_data_settings(args.config)
        given = None  # check_label_size names --protocol=<protocol> by default
        if args.protocol is None:
            args.protocol = evaluator.settings_of(args.config)["protocol"]
            given = f"config.evals.test.protocol={args.protocol!r} (--protocol's default)"
        protocols.check_label_size(args.protocol, weights, args.config.image_size,
                                   given=given)
    if args.frames is not None:
        eval_data.frames_flag(args.frames)
    if args.out_file:
        with cli.faults_in_one_line(ValueError):
            report_files.check_out_file(args.out_file)
    with console.stoppable_console(args.verbosity, command=argv is None):
        return _run(args, step_arg)


def best_choice_warning(config: ml_collections.ConfigDict, split: str, step: int) -> str | None:
    """The warning for evaluating `split` at the best checkpoint (of `step`) that `config`'s
    evaluators chose, when it is test and they chose on test clips: on `validation`, whose
    clips are all test clips in SURREAL (its val is a subset of test; the demo's too,
    docs/surreal_format.md), or on `test` itself. None otherwise. The evaluator that chose is
    the one that keeps the best checkpoint (`eval_settings.keeper`)."""
    evals = run_config.evals_of(config)
    name = eval_settings.keeper(evals)
    if split != "test" or name is None or evals[name]["split"] not in ("validation", "test"):
        return None
    e = evals[name]
    chosen = ("on the test split itself" if e["split"] == "test" else
              "on split validation, whose clips are all in test (SURREAL's val is a subset "
              "of its test split)")
    return (f"--step=best: checkpoint {step} was chosen by config.evals.{name} "
            f"({e['best_metric']}) {chosen}, so this test figure is not fully held out. For a "
            f"held-out figure, evaluate the last step (no --step), or train with the best "
            f"checkpoint chosen on a held-out part of train")


def _run(args: flags.FlagValues, step_arg: int | str | None) -> int:
    """The evaluation of `main`, its flags parsed and its console set up; -> exit status."""
    compilation_cache.enable(args.compilation_cache)
    traceback = args.verbosity >= 1
    with cli.faults_in_one_line(*trained_model.RESTORE_FAULTS, traceback=traceback):
        config, variables, step = trained_model.restore_for_inference(args.workdir, step_arg,
                                                                      args.config)
    if step_arg == "best" and (warning := best_choice_warning(config, args.split, step)):
        logging.warning("%s", warning)
    configured = evaluator.settings_of(config)
    frames = args.frames or configured["frames"]
    flip = configured["flip"] if args.flip is None else args.flip
    max_examples = configured["max_examples"] if args.max_examples is None else args.max_examples
    # The trainer's faults: a full disk, out of device memory, a damaged shard, a dataset that
    # is not built or does not hold the frames asked for.
    with cli.faults_in_one_line(*loop.FAULTS, traceback=traceback):
        with device_memory.explained(config, "while evaluating", "eval_batch_size"):
            summary = evaluator.evaluate(config, variables, split=args.split, frames=frames,
                                         flip=flip, protocol=args.protocol,
                                         max_examples=max_examples)
        summary["step"], summary["workdir"] = step, paths.text(paths.absolute(args.workdir))
        if step_arg == "best":
            summary["checkpoint"] = "best"
        trained_size = trained_model.trained_image_size(args.workdir)
        # A limit that cut no frame evaluated the whole selection: named as that evaluation.
        cut = max_examples if summary.get("frames_selected", max_examples + 1) > max_examples \
            else 0
        out = args.out_file or os.path.join(args.workdir, workdirs.evaluation_file(
            args.split, step, best=step_arg == "best", frames=frames, flip=flip,
            max_examples=cut, protocol=args.protocol,
            image_size=config.image_size if trained_size not in (None, config.image_size)
            else None))
        report_files.write_report(summary, out)
    print(markdown.to_markdown(summary))
    print(report_files.result_line(summary, args.workdir, out, step))
    out = paths.absolute(out)  # as hgmt.main and hgmt.export name their files
    print(f"wrote {out} and {os.path.splitext(out)[0]}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
