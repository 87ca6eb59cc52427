"""A prediction's result as hgmt.predict writes it: its JSON fields (`to_json`, an image's
JSON or a video frame's line) and an image's panel of figures (`panel`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hgmt.tasks import TASKS, drawing


def to_json(result: dict, tasks: Sequence[str]) -> dict:
    """The JSON-able part of a result: 'image_size_px' [W, H], the size of the image as
    predicted (upright: `image_file.read_image`, a video's `video_file.Clip.batches`), whose
    pixels every coordinate refers to; the window predicted on ('bbox' x, y, w, h in image px,
    which `--bbox` takes back; 'bbox_found_by': `person.Window.found_by`; 'model_passes';
    'crop_metres', the metres a training window spans at the person, which 3D decoding's
    scale rests on), and each task's `to_json` (joints, class maps in the crop's label frame,
    as lists)."""
    window = result["window"]
    height, width = result["frame"].image_shape
    out = {"tasks": list(tasks),
           "image_size_px": [int(width), int(height)],
           "bbox": np.round(window.bbox, 6).tolist(), "bbox_found_by": window.found_by,
           "model_passes": result["passes"], "crop_metres": round(result["crop_metres"], 4),
           "crop_affine_image_to_label": np.round(result["crop"], 6).tolist()}
    for t in tasks:
        out.update(TASKS[t].to_json(result))
    return out


PANEL_MAX_WIDTH = 1400  # pixels: the panel's figures wrap into rows no wider


def panel(result: dict) -> np.ndarray:
    """(rows*PLOT_HEIGHT, W, 3) uint8 RGB: the input crop, then each predicted task's figure
    (its `plot`) in task order (2D skeleton; 3D skeleton, front and side, axes in mm; depth
    with a colour bar in mm from the pelvis; parts with a legend), in rows of at most
    PANEL_MAX_WIDTH pixels. The input crop's caption says so when the model saw no person on
    it (`person.Window.person_seen`): "input crop" then what found the window, e.g. "whole
    image: no person found"."""
    window = result["window"]
    caption = "input crop" if window.person_seen else "input crop\n" + window.found_by.replace(
        "; ", ";\n")
    pictures = [drawing.render(drawing.figure_image(result["crop_image"], caption))]
    pictures += [drawing.render(TASKS[t].plot(result)) for t in result["raw"]]
    return drawing.tile(pictures, PANEL_MAX_WIDTH)
