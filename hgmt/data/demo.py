"""The demo dataset: SURREAL-format clips from `hgmt.sources.synthetic`, built into a TFDS dataset
by the SURREAL builder (data_builders/surreal), exactly as a real SURREAL download is built."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys

from hgmt.sources import synthetic

# Written into the clips' root once every clip is written, with what was generated: clips of
# other settings are generated again; clips without it (an interrupted generation, or clips
# hgmt did not generate) stop the build, naming the folder to remove.
GENERATED_FILE = "demo_generated.json"


def build(surreal_root: str, data_dir: str, clips_per_split: int, frames: int, seed: int = 0,
          dataset: str = "surreal/all", workers: int = 1) -> str:
    """Generates `clips_per_split` clips of `frames` frames per split under `surreal_root`
    (unless a complete generation of the same settings is there; in `workers` processes) and
    builds `dataset` into `data_dir` (unless built there already). Returns `data_dir`."""
    if _builder(dataset, data_dir)[1]:
        return data_dir
    settings = {"clips_per_split": clips_per_split, "frames": frames, "seed": seed}
    marker = os.path.join(surreal_root, GENERATED_FILE)
    done = None
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
    if done != settings:
        clips = os.path.join(surreal_root, "cmu")
        if done is not None:  # another complete generation of hgmt's: its clips are not these
            shutil.rmtree(clips, ignore_errors=True)
            os.remove(marker)
        elif os.path.isdir(clips) and os.listdir(clips):
            raise RuntimeError(
                f"{clips} holds clips but {surreal_root} has no {GENERATED_FILE}: an "
                f"interrupted demo generation, or clips hgmt did not generate. Remove {clips} "
                f"to generate the demo clips again, or give another demo folder")
        logging.info("generating demo SURREAL clips in %s", surreal_root)
        synthetic.generate(surreal_root, clips_per_split, frames, seed, workers=workers)
        with open(marker, "w") as f:
            json.dump(settings, f)
    return build_dataset(surreal_root, data_dir, dataset)


def build_dataset(surreal_root: str, data_dir: str, dataset: str = "surreal/all") -> str:
    """Builds the SURREAL-format clips under `surreal_root` (generated, edited or real) into
    `dataset` in `data_dir`, unless built there already. Returns `data_dir`."""
    import tensorflow_datasets as tfds

    builder, prepared = _builder(dataset, data_dir)
    if prepared:
        return data_dir
    logging.info("building %s into %s", dataset, data_dir)
    tfds.display_progress_bar(sys.stderr.isatty())  # progress bars on a terminal, not in logs
    # TFDS prints its lines ("Downloading and preparing ...") to stdout, which the commands
    # and benchmarks keep for their results (JSON): to stderr, with the logs.
    with contextlib.redirect_stdout(sys.stderr):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=surreal_root))
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
        builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
        return builder, builder.is_prepared()
    finally:
        absl_logger.setLevel(level)
