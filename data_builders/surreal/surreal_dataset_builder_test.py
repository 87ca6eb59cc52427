"""TFDS's standard builder checks on the committed dummy_data, one test case per config.

dummy_data holds 2 clips of 8 frames per split in SURREAL's layout, val's being copies of
test's (SURREAL's val clips are test clips), made with
`python -m hgmt.sources.synthetic --out_dir=data_builders/surreal/dummy_data --clips_per_split=2
--frames_per_clip=8`
after removing dummy_data/cmu (procedural demo data, no SURREAL frames; tests/test_builder.py
checks that the command writes these files). Per clip, `all` keeps the 8 frames, `every10`
frame 0 and the middle frame ceil(8/2) (0-based 3), `middle` the middle frame only.
"""

import tensorflow_datasets as tfds

from data_builders.surreal import surreal_dataset_builder


class _Base(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = surreal_dataset_builder.Builder
    SKIP_TF1_GRAPH_MODE = True
    # SURREAL's val clips are test clips, and so are the dummy data's: TFDS's check that no
    # example is in two splits would fail on them.
    OVERLAPPING_SPLITS = ["validation"]


class AllFramesTest(_Base):
    BUILDER_CONFIG_NAMES_TO_TEST = ["all"]
    SPLITS = {"train": 16, "validation": 16, "test": 16}


class EveryTenthFrameTest(_Base):
    BUILDER_CONFIG_NAMES_TO_TEST = ["every10"]
    SPLITS = {"train": 4, "validation": 4, "test": 4}


class MiddleFrameTest(_Base):
    BUILDER_CONFIG_NAMES_TO_TEST = ["middle"]
    SPLITS = {"train": 2, "validation": 2, "test": 2}


del _Base  # not a test case of its own

if __name__ == "__main__":
    tfds.testing.test_main()
