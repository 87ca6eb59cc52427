"""hgmt.data.tf_example: records parsed in one pass equal tfds's own parse."""

import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hgmt.data import builds, record_reads, tf_example


def assert_same_record(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, expected in theirs.items():
        value = ours[key]
        assert type(value) is type(expected), key
        if isinstance(expected, np.ndarray):
            assert (value.dtype, value.shape) == (expected.dtype, expected.shape), key
            np.testing.assert_array_equal(value, expected, err_msg=key)
        else:
            assert value == expected, key


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_record_equals_tfds_parse(demo_dataset, split):
    """Every record of the demo build, each of its features (every feature the builder
    defines): the same type, dtype, shape and value as tfds's `deserialize_example_np` with
    the image features skip-decoded."""
    source = builds.open_split("surreal/all", demo_dataset[1], split)
    assert isinstance(source, tf_example.ParsedSource)
    theirs = source.source  # the tfds data source open_split wraps
    assert len(source) == len(theirs) > 0 and repr(source) == repr(theirs)
    assert set(source[0]) == set(theirs.dataset_info.features)
    kinds = set()
    for i in range(len(source)):
        ours = source[i]
        assert_same_record(ours, theirs[i])
        kinds |= {type(v) for v in ours.values()}
    assert kinds == {bytes, int, float, np.ndarray}  # every kind of value was compared
    # grain's worker processes receive the source pickled
    assert_same_record(pickle.loads(pickle.dumps(source))[1], theirs[1])


def test_a_source_of_some_features_reads_only_those(demo_dataset):
    full = builds.open_split("surreal/all", demo_dataset[1], "test")
    light = builds.open_split("surreal/all", demo_dataset[1], "test",
                          features=("frame", "num_frames"))
    for i in range(len(full)):
        assert light[i] == {"frame": full[i]["frame"], "num_frames": full[i]["num_frames"]}
    with pytest.raises(KeyError, match="^'the dataset has no features frames'$"):
        builds.open_split("surreal/all", demo_dataset[1], "test", features=("frames",))


def test_a_record_without_a_feature_is_damaged(demo_dataset):
    """A record that lacks a feature of the specs raises, so the loader's guard counts it as
    damaged, as tfds's parse would."""
    source = builds.open_split("surreal/all", demo_dataset[1], "train")
    specs = source.specs + (("missing", np.dtype(np.float32), (2,)),)
    with pytest.raises(KeyError, match="'missing'"):
        tf_example.parse(source.source.data_source[0], specs)
    with pytest.raises(record_reads.DamagedRecord, match="missing"):
        record_reads.read(tf_example.ParsedSource(source.source, specs), 0)


def test_other_feature_kinds_keep_tfds_parse():
    features = tfds.features.FeaturesDict({"x": tfds.features.Tensor(shape=(2,),
                                                                      dtype=np.float32)})
    assert tf_example.specs_of(features, None) == (("x", np.dtype(np.float32), (2,)),)
    for other in (tfds.features.ClassLabel(num_classes=3),
                  tfds.features.Tensor(shape=(None,), dtype=np.float32),
                  tfds.features.Image(shape=(4, 4, 3))):  # decoded, not skipped
        assert tf_example.specs_of(tfds.features.FeaturesDict({"x": other}), None) is None
