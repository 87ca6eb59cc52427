"""SURREAL (Varol et al., CVPR 2017) as TFDS records: one example per usable video frame.

    tfds build data_builders/surreal --manual_dir=<SURREAL root> --data_dir=<out> \
        --config=every10 --file_format=array_record [--beam_pipeline_options=...]

The builder decodes the four files of every clip with `hgmt.surreal` and stores the raw frame,
segments, metric depth and annotations; crops, label maps and augmentation happen later in the
input pipeline, so one build serves every task subset. Unusable clips and frames are skipped,
logged and counted (Beam counters on the Beam path); the counts are written next to the
dataset as `skipped.json`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from hgmt import surreal

_DESCRIPTION = """\
SURREAL: 6.5 M synthetic frames of SMPL bodies (CMU motion capture) rendered over LSUN
backgrounds, with 2D/3D joints, 24-part segmentation and depth. One example per frame.
"""
_HOMEPAGE = "https://www.di.ens.fr/willow/research/surreal/"


@dataclasses.dataclass
class SurrealConfig(tfds.core.BuilderConfig):
    """Which frames of each clip become examples: every `every`-th frame (0, k, 2k, ...) and
    always the middle frame ceil(T/2) of the test protocol; `middle_only` keeps just that."""

    every: int = 1
    middle_only: bool = False

    def keeps(self, t: int, num_frames: int) -> bool:
        middle = t == surreal.middle_frame(num_frames)
        return middle if self.middle_only else (middle or t % self.every == 0)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for SURREAL (cmu part): splits train, validation, test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SurrealConfig(name="middle", middle_only=True,
                      description="The middle frame ceil(T/2) of each clip (test protocol)."),
        SurrealConfig(name="every10", every=10,
                      description="Every 10th frame of each clip, plus its middle frame."),
        SurrealConfig(name="all", every=1, description="Every usable frame."),
    ]
    DEFAULT_CONFIG_NAME = "every10"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    SURREAL needs a licence agreement and cannot be downloaded automatically. Request access at
    https://www.di.ens.fr/willow/research/surreal/data/ , download SURREAL_v1.tar.gz (86 GB),
    extract it, and pass the folder that contains `cmu/` (with cmu/train, cmu/val, cmu/test) as
    --manual_dir. For demo data in the same layout: python -m hgmt.synthetic --out DIR.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        h, w = surreal.IMAGE_HEIGHT, surreal.IMAGE_WIDTH
        f32 = np.float32
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            homepage=_HOMEPAGE,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(h, w, 3), encoding_format="png",
                                             doc="RGB frame decoded from the clip's H.264 mp4"),
                "segm": tfds.features.Image(shape=(h, w, 1), encoding_format="png",
                                            doc="raw SMPL segment 0..24, 0 background"),
                "depth": tfds.features.Image(shape=(h, w, 1), dtype=np.uint16,
                                             encoding_format="png",
                                             doc="camera depth in millimetres, 0 background"),
                "joints2d": tfds.features.Tensor(shape=(24, 2), dtype=f32,
                                                 doc="24 SMPL joints, image pixels (u, v)"),
                "joints3d": tfds.features.Tensor(shape=(24, 3), dtype=f32,
                                                 doc="24 SMPL joints, world metres"),
                "cam_loc": tfds.features.Tensor(shape=(3,), dtype=f32,
                                                doc="camera location, world metres"),
                "zrot": tfds.features.Scalar(dtype=f32, doc="body rotation about vertical"),
                "gender": tfds.features.Scalar(dtype=np.int32, doc="0 female, 1 male"),
                "pose": tfds.features.Tensor(shape=(72,), dtype=f32, doc="SMPL pose"),
                "shape": tfds.features.Tensor(shape=(10,), dtype=f32, doc="SMPL shape"),
                "sequence": tfds.features.Text(doc="CMU sequence, e.g. 01_01"),
                "clip": tfds.features.Text(doc="clip name, e.g. c0001"),
                "run": tfds.features.Text(doc="SURREAL run, e.g. run0"),
                "frame": tfds.features.Scalar(dtype=np.int32, doc="0-based frame index"),
                "num_frames": tfds.features.Scalar(
                    dtype=np.int32, doc="frames the clip's four files share (T)"),
            }),
            supervised_keys=None,
            citation=_CITATION,
        )

    def _download_and_prepare(self, dl_manager, download_config):
        self._use_beam = bool(download_config.beam_options or download_config.beam_runner)
        self._skipped = {}
        super()._download_and_prepare(dl_manager, download_config)
        if self._use_beam:  # each split's pipeline branch wrote its counts to a part file
            for split in SPLITS:
                part = self.data_path / f"skipped-{split}.json"
                self._skipped[split] = json.loads(part.read_text())
                part.unlink()
        summary = {split: dict(sorted(c.items())) for split, c in self._skipped.items()}
        logging.info("SURREAL build summary (skipped / counted): %s", summary)
        (self.data_path / "skipped.json").write_text(json.dumps(summary, indent=1))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = dl_manager.manual_dir
        if not (root / "cmu").exists():
            raise FileNotFoundError(
                f"{root}/cmu not found: --manual_dir must be the folder that contains cmu/ "
                f"(cmu/train, cmu/val, cmu/test).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return {split: self._generate_examples(str(root), split) for split in SPLITS}

    def _generate_examples(self, root: str, split: str):
        stems = surreal.find_clips(root, split)
        config = self.builder_config
        if getattr(self, "_use_beam", False):
            return _beam_examples(stems, config, str(self.data_path / f"skipped-{split}.json"))
        counts = self._skipped.setdefault(split, collections.Counter())
        return _python_examples(stems, config, counts)


SPLITS = ("train", "validation", "test")


def _python_examples(stems, config, counts):
    for stem in stems:
        yield from clip_examples(stem, config, counts)


def _beam_examples(stems: list[str], config: SurrealConfig, counts_path: str):
    """The Beam path: one clip per element (reshuffled so workers share the clips); the
    examples go to TFDS, the skip counts to Beam counters and, summed, to `counts_path`."""
    beam = tfds.core.lazy_imports.apache_beam

    def per_clip(stem):
        counts = collections.Counter()
        yield from clip_examples(stem, config, counts)
        for reason, n in counts.items():
            beam.metrics.Metrics.counter("surreal", reason).inc(n)
        yield beam.pvalue.TaggedOutput("counts", dict(counts))

    def write_counts(per_clip_counts):
        total = sum((collections.Counter(c) for c in per_clip_counts), collections.Counter())
        epath.Path(counts_path).write_text(json.dumps(dict(total)))

    @beam.ptransform_fn
    def build(pipeline):
        out = (pipeline | "clips" >> beam.Create(stems) | "spread" >> beam.Reshuffle()
               | "examples" >> beam.FlatMap(per_clip).with_outputs("counts", main="examples"))
        _ = (out.counts | "to_list" >> beam.combiners.ToList()
             | "write_counts" >> beam.Map(write_counts))
        return out.examples

    return build()


def clip_examples(stem: str, config: SurrealConfig,
                  counts: collections.Counter) -> Iterator[tuple[str, dict]]:
    """(key, example) for the kept, usable frames of one clip; counts what it skips.

    A clip with a missing or unreadable file is skipped whole ("clip_<problem>"); a clip whose
    files disagree on frame count keeps their common prefix ("clip_frame_count_mismatch");
    frames with all joints at zero or the person outside the image are skipped one by one.
    """
    try:
        clip = surreal.load_clip(stem)
    except surreal.FormatError as e:
        reason = "clip_missing_file" if e.problem == "file is missing" else "clip_unreadable_file"
        logging.warning("skipping clip %s: %s", stem, e)
        counts[reason] += 1
        return
    counts["clips"] += 1
    if clip.mismatch:
        counts["clip_frame_count_mismatch"] += 1
    t_all = clip.num_frames
    cid = clip.id
    for t in range(t_all):
        if not config.keeps(t, t_all):
            continue
        problem = surreal.frame_problem(clip.info.joints2d[t])
        if problem is not None:
            logging.info("skipping %s frame %d: %s", stem, t, problem)
            counts[f"frame_{problem}"] += 1
            continue
        counts["examples"] += 1
        depth_mm = np.round(clip.depth[t] * 1000.0)
        yield f"{cid.run}/{cid.name}/{t:04d}", {
            "image": clip.video[t],
            "segm": clip.segm[t][..., None],
            "depth": np.clip(depth_mm, 0, 65535).astype(np.uint16)[..., None],
            "joints2d": clip.info.joints2d[t],
            "joints3d": clip.info.joints3d[t],
            "cam_loc": clip.info.cam_loc,
            "zrot": clip.info.zrot[t],
            "gender": np.int32(clip.info.gender[t]),
            "pose": clip.info.pose[t],
            "shape": clip.info.shape[t],
            "sequence": cid.sequence,
            "clip": cid.clip,
            "run": cid.run,
            "frame": np.int32(t),
            "num_frames": np.int32(t_all),
        }


_CITATION = """\
@inproceedings{varol17_surreal,
  title     = {Learning from Synthetic Humans},
  author    = {Varol, G{\\"u}l and Romero, Javier and Martin, Xavier and Mahmood, Naureen and
               Black, Michael J. and Laptev, Ivan and Schmid, Cordelia},
  booktitle = {CVPR},
  year      = {2017}
}
"""
