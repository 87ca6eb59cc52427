"""The demo dataset: SURREAL-format clips from `hgmt.sources.synthetic`, built into a TFDS dataset
by the SURREAL builder (data_builders/surreal), exactly as a real SURREAL download is built."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys

from etils import epath

from hgmt import console, disk_space
from hgmt.data import shards
from hgmt.sources import synthetic

# Written into the clips' root once every clip is written, with what was generated: clips of
# other settings are generated again; clips without it (an interrupted generation, or clips
# hgmt did not generate) stop the build, naming the folder to remove. Also written into the
# built dataset's folder: a dataset built from other settings is built again.
GENERATED_FILE = "demo_generated.json"


def build(surreal_root: str, data_dir: str, clips_per_split: int, frames: int, seed: int = 0,
          dataset: str = "surreal/all", workers: int = 1) -> str:
    """Generates `clips_per_split` clips of `frames` frames per split under `surreal_root`
    (unless a complete generation of the same settings is there; in `workers` processes) and
    builds `dataset` into `data_dir` (unless built there from the same settings, or built
    there with no record of its settings: then reused, with a warning). Returns `data_dir`."""
    settings = {"clips_per_split": clips_per_split, "frames": frames, "seed": seed,
                "generator": synthetic.FORMAT_VERSION}
    builder, prepared = _builder(dataset, data_dir)
    if prepared:
        built = _read(epath.Path(builder.data_dir) / GENERATED_FILE)
        if built == settings:
            return data_dir
        if built is None:
            logging.warning("%s holds %s with no record of the demo settings it was built "
                            "from: used as it is (remove %s to build the demo of %s there)",
                            data_dir, dataset, builder.data_dir, settings)
            return data_dir
        logging.warning("%s holds %s built from other demo settings (%s): building %s",
                        data_dir, dataset, built, settings)
        epath.Path(builder.data_dir).rmtree()
    marker = os.path.join(surreal_root, GENERATED_FILE)
    done = _read(epath.Path(marker))
    if done != settings:
        clips = os.path.join(surreal_root, "cmu")
        if done is not None:  # another complete generation of hgmt's: its clips are not these
            shutil.rmtree(clips, ignore_errors=True)
            os.remove(marker)
        logging.info("generating demo SURREAL clips in %s", surreal_root)
        fresh = not os.path.exists(clips)
        try:
            with disk_space.reported(surreal_root, "the demo clips",
                                     cleanup=lambda: _removed(clips) if fresh else ""):
                synthetic.generate(surreal_root, clips_per_split, frames, seed,
                                   workers=workers)
        except synthetic.ClipsExist:  # clips not of a complete generation of hgmt's
            raise RuntimeError(
                f"{clips} holds clips but {surreal_root} has no {GENERATED_FILE}: an "
                f"interrupted demo generation, or clips hgmt did not generate. Remove {clips} "
                f"to generate the demo clips again, or give another demo folder") from None
        except BaseException:  # e.g. Ctrl-C: a rerun generates the clips again, not stops
            if fresh:
                shutil.rmtree(clips, ignore_errors=True)
            raise
        with open(marker, "w") as f:
            json.dump(settings, f)
    with disk_space.reported(data_dir, f"{dataset}, built from the demo clips"):
        build_dataset(surreal_root, data_dir, dataset)
    (epath.Path(builder.data_dir) / GENERATED_FILE).write_text(json.dumps(settings))
    return data_dir


def _removed(clips: str) -> str:
    """Removes the clips a generation had written (`clips` was not there before it), so that a
    rerun generates them again; -> the sentence that says so."""
    shutil.rmtree(clips, ignore_errors=True)
    return f"Removed the clips written so far ({clips})."


def _read(path: epath.Path) -> dict | None:
    """The JSON object in the file at `path`; None when there is no such file."""
    return json.loads(path.read_text()) if path.exists() else None


def build_dataset(surreal_root: str, data_dir: str, dataset: str = "surreal/all") -> str:
    """Builds the SURREAL-format clips under `surreal_root` (generated, edited or real) into
    `dataset` in `data_dir`, unless built there already. Returns `data_dir`."""
    import tensorflow_datasets as tfds

    builder, prepared = _builder(dataset, data_dir)
    if prepared:
        return data_dir
    logging.info("building %s into %s", dataset, data_dir)
    tfds.display_progress_bar(sys.stderr.isatty())  # progress bars on a terminal, not in logs
    # TFDS prints two lines to stdout, which the commands and benchmarks keep for their results
    # (JSON): "Downloading and preparing dataset Unknown size ..." (nothing is downloaded) and
    # "... downloaded and prepared to ...". Library chatter: logged for --verbosity=1 only;
    # the line after the build says what was built.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=surreal_root))
    finally:
        for line in printed.getvalue().splitlines():
            logging.info("tensorflow_datasets: %s", line, extra=console.VERBOSE)
    splits = builder.info.splits
    logging.info("built %s into %s: %s", dataset, builder.data_dir, ", ".join(
        f"{splits[name].num_examples} {name} examples" for name in splits))
    return data_dir


def _builder(dataset: str, data_dir: str):
    """(the TFDS builder of `dataset` in `data_dir`, whether it is built there), without
    TFDS's warning that a dataset not built yet has no dataset_info.json (what the callers are
    here to find out)."""
    import tensorflow_datasets as tfds

    import data_builders.surreal  # noqa: F401  (registers `surreal`)

    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        builder = tfds.builder(dataset, data_dir=data_dir, file_format=shards.FILE_FORMAT)
        return builder, builder.is_prepared()
    finally:
        absl_logger.setLevel(level)
