"""A built split's records as tfds gives them, parsed in one pass over their tf.train.Example.

tfds's own numpy parse (`FeaturesDict.deserialize_example_np`) walks each feature of a SURREAL
record through several Python helpers; `ParsedSource` reads the same serialized proto
with the same specs in a quarter of the time (docs/performance.md, "Parsing the records"),
and gives exactly tfds's values: scalars as Python values, tensors as arrays of their shape and
dtype, strings and the skip-decoded image features as bytes. It covers the feature kinds of a
SURREAL build (Tensor and Scalar without encoding, Text without encoder, skip-decoded Image);
`parsed` leaves a source with any other kind as tfds opened it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tensorflow_datasets.core import features as tfds_features
from tensorflow_datasets.core.decode import base as tfds_decode
from tensorflow_datasets.core.features import tensor_feature
from tensorflow_datasets.proto import tf_example_pb2

# (name, numpy dtype, shape) of each feature, in the dataset's feature order.
Specs = tuple[tuple[str, np.dtype, tuple[int, ...]], ...]


def specs_of(features: tfds_features.FeaturesDict, decoders: dict | None) -> Specs | None:
    """The parse specs of a dataset's top-level `features`, read with `decoders`; None when
    one of them is a kind `parse` does not reproduce (tfds's parse is then the one to use)."""
    specs = []
    for name, feature in features.items():
        skipped = isinstance((decoders or {}).get(name), tfds_decode.SkipDecoding)
        if isinstance(feature, tfds_features.Image) and skipped:
            pass
        elif isinstance(feature, tfds_features.Text) and feature.encoder is None:
            pass
        elif type(feature) in (tfds_features.Tensor, tfds_features.Scalar):
            if feature._encoding != tensor_feature.Encoding.NONE or None in feature.shape:
                return None
        else:
            return None
        info = feature.get_serialized_info()
        specs.append((name, np.dtype(info.np_dtype), tuple(info.shape)))
    return tuple(specs)


def parse(serialized: bytes, specs: Specs) -> dict[str, Any]:
    """A serialized tf.train.Example -> {name: value} as tfds's numpy parse makes it: a
    scalar feature as its Python value (cast to its dtype first), a bytes feature as bytes,
    a tensor as an array of its dtype and shape. KeyError naming a feature the record lacks."""
    feature_map = tf_example_pb2.Example.FromString(serialized).features.feature
    out = {}
    for name, dtype, shape in specs:
        if name not in feature_map:
            raise KeyError(f"the record has no feature {name!r}")
        feature = feature_map[name]
        values = getattr(feature, feature.WhichOneof("kind")).value
        if dtype.kind == "O":  # strings and encoded images
            out[name] = values[0] if not shape else np.array(values, object).reshape(shape)
        elif not shape:
            out[name] = np.array(values, dtype).item()
        else:
            out[name] = np.array(values, dtype).reshape(shape)
    return out


class ParsedSource:
    """A tfds array_record data source whose records `parse` reads: the same length, records,
    `dataset_info`, `split` and repr (grain checks the repr when a loader's checkpointed
    position is restored)."""

    def __init__(self, source: Any, specs: Specs):
        self.source, self.specs = source, specs
        self.dataset_info, self.split = source.dataset_info, source.split

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return parse(self.source.data_source[index], self.specs)

    def __repr__(self) -> str:
        return repr(self.source)


def parsed(source: Any, features: Sequence[str] | None = None) -> Any:
    """`source` (a tfds array_record data source) read by `parse` where its features allow,
    its records limited to `features` (default all; e.g. a frame's number, read for every
    record of a split without the cost of its images' values), else `source` itself."""
    specs = specs_of(source.dataset_info.features, source.decoders)
    if specs is None:
        return source
    if features is not None:
        missing = set(features) - {name for name, _, _ in specs}
        if missing:
            raise KeyError(f"the dataset has no features {', '.join(sorted(missing))}")
        specs = tuple(spec for spec in specs if spec[0] in features)
    return ParsedSource(source, specs)
