"""TensorBoard summaries of training and evaluation, written without TensorFlow.

`create(workdir)` gives the writer the trainer, the validator and the evaluation write to: on
process 0 an event-file writer in `workdir` (TensorBoard's own record framing and summary
protos, which need only numpy, protobuf and the `tensorboard` package; the file opened through
`etils.epath`, so a local workdir never imports TensorFlow, which TensorBoard's
`EventFileWriter` does wherever it is installed; images PNG-encoded with Pillow), elsewhere a
writer that drops everything. Scalars and images are written in the form
`tf.summary.scalar` and `tf.summary.image` write them (tensors tagged for TensorBoard's scalars
and images plugins), so TensorBoard shows them as it shows those.
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import time
from collections.abc import Mapping

import numpy as np
from etils import epath
from PIL import Image
from tensorboard.compat.proto import (
    event_pb2,
    summary_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.record_writer import RecordWriter

# Event files of this process, numbered as TensorBoard's EventFileWriter numbers its own.
_FILE_NUMBERS = itertools.count()


class SummaryWriter:
    """Scalars and images into a TensorBoard event file under `logdir` (created if missing).
    The methods match what the loop, the validator and the evaluator call: `write_scalars`,
    `write_images`, `flush`, `close`."""

    def __init__(self, logdir: str):
        folder = epath.Path(logdir)
        folder.mkdir(parents=True, exist_ok=True)
        # TensorBoard's EventFileWriter's file name, which TensorBoard looks for
        # ("tfevents"), and its first record, the file's version.
        self.path = folder / (f"events.out.tfevents.{int(time.time()):010d}."
                              f"{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBERS)}")
        self._records = RecordWriter(self.path.open("wb"))
        self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One float32 value per tag at `step`."""
        self._write(step, [summary_pb2.Summary.Value(
            tag=tag, metadata=_SCALAR, tensor=tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                float_val=[float(np.asarray(value))]))
            for tag, value in scalars.items()])

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Per tag a batch (n, H, W, C) of images at `step`, C 1, 3 or 4: uint8, or floats in
        [0, 1]. Each is stored as a PNG."""
        values = []
        for tag, batch in images.items():
            batch = np.asarray(batch)
            if batch.ndim != 4 or batch.shape[-1] not in (1, 3, 4):
                raise ValueError(f"image summary {tag!r}: expected (n, height, width, 1|3|4) "
                                 f"images, got shape {batch.shape}")
            if batch.dtype != np.uint8:
                batch = np.clip(np.round(batch.astype(np.float64) * 255), 0, 255).astype(
                    np.uint8)
            n, height, width, _ = batch.shape
            pngs = [_png(image) for image in batch]
            values.append(summary_pb2.Summary.Value(
                tag=tag, metadata=_IMAGE, tensor=tensor_pb2.TensorProto(
                    dtype=types_pb2.DT_STRING,
                    tensor_shape=tensor_shape_pb2.TensorShapeProto(
                        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n + 2)]),
                    string_val=[str(width).encode(), str(height).encode(), *pngs])))
        self._write(step, values)

    def restart(self, step: int) -> None:
        """Marks a run (re)starting at `step` (TensorBoard's SessionLog START, as
        tf.summary's purge_step writes it): TensorBoard's Python loader then drops what the
        event files before this one in the folder hold of `step` and later, the steps of a
        run that was not continued (its default loader keeps a tag's last value of a step;
        `set_aside_earlier` moves a fresh start's predecessors away for both)."""
        self._add(event_pb2.Event(wall_time=time.time(), step=int(step),
                                  session_log=event_pb2.SessionLog(
                                      status=event_pb2.SessionLog.START)))

    def flush(self) -> None:
        """Pushes what was written to the file (each write is flushed already)."""
        self._records.flush()

    def close(self) -> None:
        """Closes the event file; nothing may be written after."""
        self._records.close()

    def _write(self, step: int, values: list) -> None:
        self._add(event_pb2.Event(wall_time=time.time(), step=int(step),
                                  summary=summary_pb2.Summary(value=values)))

    def _add(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()  # a few writes per log interval: on disk at once, kill or not


class NullWriter:
    """The writer of processes other than 0: accepts everything, writes nothing."""

    def restart(self, step: int) -> None:
        """Nothing: `SummaryWriter.restart` on process 0 marks it."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Drops `scalars` ({tag: value})."""

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Drops `images` ({tag: (n,H,W,C) images})."""

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to close."""


def set_aside_earlier(workdir: str, own: str, aside: str) -> list[str]:
    """Moves the event files in `workdir` other than `own` (the running writer's `path`)
    into the folder `aside`: the summaries of an earlier run, which a run starting at step 0
    does not continue, so that TensorBoard shows neither its steps nor its tags beside the new
    run's. -> the names moved."""
    folder, own = epath.Path(workdir), epath.Path(own).name
    earlier = sorted(p for p in folder.glob("events.out.tfevents.*") if p.name != own)
    if earlier:
        epath.Path(aside).mkdir(parents=True, exist_ok=True)
        for path in earlier:
            path.rename(epath.Path(aside) / path.name)
    return [p.name for p in earlier]


def create(workdir: str, process_index: int = 0) -> SummaryWriter | NullWriter:
    """The summary writer of a training run: event files in `workdir` on process 0, none on
    the other processes."""
    return SummaryWriter(workdir) if process_index == 0 else NullWriter()


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out, format="PNG")
    return out.getvalue()


_SCALAR = scalar_metadata.create_summary_metadata(display_name=None, description=None)
_IMAGE = image_metadata.create_summary_metadata(display_name=None, description=None)
