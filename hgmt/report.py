"""The task-combination study: which tasks help which (the seed paper's analysis).

    python -m hgmt.report --sweep_dir=runs/sweep --out_dir=docs/study \\
        [--protocol=hgmt|bodynet|surreal] [--note=TEXT | --note_file=FILE.md]
    python -m hgmt.report --sweep_dir=runs/sweep --check_config

reads SWEEP_DIR/<tasks>/eval_test.json of every trained subset (launch/sweep.py makes them; for
`--protocol=bodynet|surreal` SWEEP_DIR/<tasks>/eval_test_<protocol>.json, which
`launch/sweep.py --protocols=...` writes, or `python -m hgmt.evaluate --workdir=<run>
--protocol=<protocol> --out_file=<run>/eval_test_<protocol>.json` (without --out_file it
names its file after the checkpoint), else eval_test.json where the run's test evaluator used
that protocol; for hgmt, of a run whose eval_test.json holds another protocol's numbers,
eval_test_hgmt.json, written by that command with --protocol=hgmt; such a file counts only
beside the run's eval_test.json and of the step that file records, where training ended) and
writes into OUT_DIR: README.md (how many runs finished and how they were evaluated: frames,
flip test and metric definitions, with what changed since and how to evaluate again where
those are older than today's; the seed paper's conclusions checked on these runs, then
tables), report.json (each task's entry with its runs' `evaluation`), claims.json
(hgmt/study/claims.py) and charts: for each task its headline metric in isolation and in
every combination containing it (`<task>_subsets.png`), and the per-joint / per-part change
of the best multi-task model over the isolated one (`<task>_per_item.png`). The README ends
with the config the runs used (their own config.json files). Runs evaluated on other frames
(number, split, frame selector, flip test or crop window), at another label size or under
other metric definitions (`metrics_version`) do not compare: the report then writes nothing
and stops with one error naming the runs and the `hgmt.evaluate` command that evaluates them
alike. So do runs trained
with other settings (their config.json files differ in a field other than those a sweep's runs
differ in by design, `hgmt.study.run_configs.PER_RUN`, and those a rerun may change,
`hgmt.training.resume.FREE_ON_RESUME`): the error names each such run, the field, its value
and the others'. A folder of SWEEP_DIR not named as a run (<subset>[@seed<k>]) is left out
with a warning; a run file that does not read stops the report in one line naming it and the
fix. The files are written together: a full disk (one line naming the file) or Ctrl-C leaves
an earlier report in OUT_DIR as it was.

`--check_config` writes nothing: it rebuilds each finished run's config from the config file
and arguments of the sweep's plan (SWEEP_DIR/sweep.json) as they are now, prints the runs whose
config.json differs (field by field), and exits 1 if any does, 0 if all match, and 2, with
one line naming what to fix, when it cannot tell (CHECK_UNUSABLE: no sweep directory, no
sweep.json, a config file or a run's config.json missing or unreadable); a bad flag exits 1
before anything is read, as in every hgmt command. Editing the config file after a sweep is
allowed; this says which runs no longer follow it. A config.json
is read in today's layout (`hgmt.run_config.current_layout`: a run older than `config.evals` has
its `eval_*` fields compared as the evaluators they amount to); an evaluator that runs at no
step in either config is not compared. Fields only one side has (an option added since, one
removed) are listed and do not make it exit 1.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

from hgmt import cli, disk_space, paths, stops
from hgmt.evaluation import protocols
from hgmt.study import charts, claims, evaluations, provenance, report, run_configs, runs

if TYPE_CHECKING:
    from absl import flags


def _define_flags(fv: flags.FlagValues) -> None:
    from absl import flags

    flags.DEFINE_string("sweep_dir", None, "sweep directory (launch/sweep.py)",
                        flag_values=fv, required=True)
    flags.DEFINE_string("out_dir", None, "report directory (required unless --check_config)",
                        flag_values=fv)
    flags.DEFINE_string("note", "", "a line placed under the title (e.g. the data)",
                        flag_values=fv)
    flags.DEFINE_string("note_file", "", "a Markdown file whose text is placed under the "
                        "title (instead of --note)", flag_values=fv)
    flags.DEFINE_enum("protocol", "hgmt", list(protocols.PROTOCOLS),
                      "compare the numbers of this metric protocol (docs/metrics.md)",
                      flag_values=fv)
    flags.DEFINE_bool("check_config", False, "write nothing; list the finished runs whose "
                      "config.json no longer matches the sweep's config file (exit 1 if any, "
                      "2 if the sweep cannot be read)",
                      flag_values=fv)


# --check_config's exit status when the sweep cannot be checked (1: runs differ, 0: all match).
CHECK_UNUSABLE = 2


def check_config(sweep_dir: str) -> int:
    """Prints each finished run whose config (in today's layout, `run_configs.check_configs`)
    differs from the sweep's config in a field both have, with those fields, then the fields
    the config gained or lost since runs were trained (a new option, a removed one: to judge
    by reading); 1 if a run differs, else 0."""
    found = run_configs.check_configs(sweep_dir)
    runs.warn_strays(sweep_dir)
    stale = {name: diff["changed"] for name, diff in found.items() if diff["changed"]}
    config = runs.plan(sweep_dir, needs=("config",))["config"]
    for name, changed in stale.items():
        print(f"{name}: differs from {config}: " + "; ".join(changed))
    for side, says in (("added", f"fields {config} has that the run's config.json lacks "
                                 f"(added since the run)"),
                       ("removed", f"fields the run's config.json has that {config} lacks "
                                   f"(removed or renamed since the run)")):
        fields = sorted({f for diff in found.values() for f in diff[side]})
        if fields:
            count = sum(bool(diff[side]) for diff in found.values())
            print(f"{count} of {len(found)} runs: {says}: {', '.join(fields)}")
    print(f"{len(found) - len(stale)} of {len(found)} finished runs in {sweep_dir} match "
          f"{config} in every field both have"
          + (f"; {len(stale)} do not (retrain them, or restore the config)" if stale else ""))
    return 1 if stale else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m hgmt.report --sweep_dir=DIR --out_dir=DIR [--protocol=P] [--note=TEXT |
    --note_file=FILE]` or `python -m hgmt.report --sweep_dir=DIR --check_config`."""
    args, _ = cli.parse(_define_flags, argv, cli.usage_first(__doc__))
    with stops.stops_in_one_line(command=argv is None):
        return _run(args)


def _run(args: flags.FlagValues) -> int:
    """The report or check of `main`, its flags parsed; -> exit status."""
    if paths.is_url(args.sweep_dir):
        raise SystemExit(f"error: --sweep_dir={args.sweep_dir}: a sweep directory is a local "
                         f"folder, as launch/sweep.py makes it; copy it to a local disk, or "
                         f"mount the bucket (gcsfuse, for one)")
    if args.check_config:
        with cli.faults_in_one_line(OSError, ValueError, status=CHECK_UNUSABLE):
            return check_config(args.sweep_dir)
    if not args.out_dir:
        raise SystemExit("error: --out_dir is required: the report directory (or give "
                         "--check_config)")
    if args.note and args.note_file:
        raise SystemExit("error: give the note as --note or as --note_file, not both")
    given = args.note
    if args.note_file:
        if not os.path.isfile(args.note_file):
            raise SystemExit(f"error: --note_file={args.note_file}: not found; give the path "
                             f"of a Markdown file, or the text with --note")
        with open(args.note_file) as f:
            given = f.read().strip()
    with cli.faults_in_one_line(FileNotFoundError, ValueError):  # messages name the fix
        found = evaluations.evaluated_runs(args.sweep_dir, args.protocol)  # read once for both
        runs.warn_strays(args.sweep_dir)
        results = evaluations.load_sweep(args.sweep_dir, args.protocol, found)
        progress = evaluations.progress(args.sweep_dir, results, found)  # reads sweep.json
    # Everything is computed before the first file is written, so that a fault leaves the
    # report directory as it was rather than new files beside old ones.
    study = report.compare(results)
    checked = claims.check(study)
    note = (given or f"Subsets evaluated: {', '.join(sorted(results))}.") + (
        f"\n\nMetric protocol: `{args.protocol}` (docs/metrics.md). {progress}")
    files = {**charts.draw(study, provenance.data_of(args.sweep_dir, list(found))),
             **{name: json.dumps(value, indent=1, allow_nan=False).encode()
                for name, value in (("report.json", study), ("claims.json", checked))},
             "README.md": report.to_markdown(study, note, checked, provenance.config_section(
                 args.sweep_dir, list(found))).encode()}
    os.makedirs(args.out_dir, exist_ok=True)
    with cli.faults_in_one_line(disk_space.DiskFull):  # the report's files all, or none
        disk_space.write_together([(os.path.join(args.out_dir, name),
                                    lambda f, data=data: f.write(data), "wb")
                                   for name, data in files.items()])
    print(f"wrote {args.out_dir}/README.md, report.json and the charts for "
          f"{', '.join(study)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
