"""What an export's hgmt.json (`export.META_FILE`) says, in words and numbers: how
hgmt.predict cuts a model input from an image (`crop_meta`, training's window in
`TRAINING_BOXES`), how it places the image in SURREAL's camera to decode 3D (`camera_meta`) and
how each output is decoded (`output_meta`): what a consumer of the exported model needs to
predict as `predictor.Predictor` does."""

from __future__ import annotations

from hgmt.data import cropping
from hgmt.inference import predictor
from hgmt.sources import camera, reference_crop
from hgmt.tasks import TASKS, common

# How training's window (config.window) is had from the 16 joints, for an export's hgmt.json.
TRAINING_BOXES = {
    "hgmt": "the 16 joints' tight box (w x h) widened by box_margins (fractions of w left and "
            "right, of h top and bottom), S the larger of its sides and min_side_px, centred "
            "on it",
    "reference_box": "the reference code's: the 16 joints plus 1 (1-based px), their tight "
                     "box from (x0, y0) to (x1, y1) with w = x1 - x0 + 1 and h = y1 - y0 + 1, "
                     "widened to start = (x0 - box_margins.left w, y0 - box_margins.top h) "
                     "and end = (x1 + box_margins.right w, y1 + box_margins.bottom h), W x H = "
                     f"end - start + 1, S = {reference_crop.WINDOW_PER_SCALE_PX:g} / "
                     f"{reference_crop.SCALE_DIVISOR_PX:g} max(W, H), c = start + (W, H) / 2 "
                     "(taken as 0-based px)",
}


def crop_meta(crop_metres: float, source: str, window: str = "hgmt") -> dict:
    """How a model input is cut from an image (`predictor.Predictor._crops`, training's
    `window`, config.window), for an export's hgmt.json: R is its `image_size`, r its `label_size`;
    `crop_metres` the metres a training window spans at the person and `source` where that
    figure comes from (measured or assumed: `crop_scale.with_source`)."""
    return {
        "window": "a square of S x S image px centred on image px c (x and y), pixel centres "
                  f"at integers; training's ({window}) is {TRAINING_BOXES[window]}: a window "
                  "spans about window_metres at the person's depth. hgmt.predict finds it "
                  "from the model's outputs, or takes the square around --bbox (its centre, "
                  "S the larger of its width and height)",
        "training_window": window,
        "box_margins": dict(reference_crop.BOX_MARGINS if window == "reference_box"
                            else cropping.BOX_MARGINS),
        "min_side_px": cropping.MIN_WINDOW_SIDE_PX,
        "window_metres": crop_metres,
        "window_metres_source": source,
        "image_px_to_input_px": "input = (R / S) * (image - c) + (R - 1) / 2, for x and y",
        "image_px_to_label_px": "label = (r / S) * (image - c) + (r - 1) / 2, for x and y",
        "sampling": "bilinear (OpenCV's warpAffine, INTER_LINEAR); an input px whose source "
                    "lies outside the image is 0 (black)",
        "max_window_px": predictor.MAX_WINDOW_PX,
        "downsampling": "where S > max(max_window_px, R) the window is cut, as above, from the "
                        "W x H image first resized to W' x H' = round(W R / S) x round(H R / S) "
                        "px (each at least 1) by pixel-area averaging (OpenCV's resize, "
                        "INTER_AREA), where image px x lies at (x + 0.5) W' / W - 0.5 (y "
                        "likewise)",
    }


def camera_meta() -> dict:
    """How hgmt.predict places an image in SURREAL's camera to decode 3D
    (`predictor.decoding_frame`, the pelvis depth of `predictor.Predictor._result`), for an
    export's hgmt.json."""
    k = camera.INTRINSICS
    return {
        "focal_px": float(k[0, 0]),
        "principal_point_px": [float(k[0, 2]), float(k[1, 2])],
        "image_width_px": camera.IMAGE_WIDTH,
        "frame_centre_px": [(camera.IMAGE_WIDTH - 1) / 2, (camera.IMAGE_HEIGHT - 1) / 2],
        "camera": "SURREAL's: focal length f = focal_px, principal point (cx, cy) = "
                  "principal_point_px, in px of its image_width_px-wide frame whose centre is "
                  "frame_centre_px (pixel centres at integers: the principal point lies half a "
                  "pixel right of and below it); x right, y down, z away from the camera",
        "image_px_to_camera_px": "u = s (x - (W - 1) / 2) + u0, v = s (y - (H - 1) / 2) + v0 "
                                 "for image px (x, y) of a W x H image, (u0, v0) = "
                                 "frame_centre_px: its centre on the frame's centre, scaled by "
                                 "s = focal_px / F for the image's focal length F px "
                                 "(hgmt.predict --focal_px), else s = image_width_px / max(W, H)",
        "pelvis_depth_m": "z_pelvis = focal_px * crop.window_metres / (s S), for a window of "
                          "S image px",
    }



def output_meta(tasks: tuple[str, ...], image_size: int) -> dict:
    """What a consumer needs to decode the outputs: the label maps' size and their pixels'
    place in the input (`common.label_to_crop_px`), and per task its shape, `OUTPUT_LAYOUT`
    (what each channel means) and `channel_flip` (its `CHANNEL_FLIP`: channel c of a mirrored
    input's output is channel channel_flip[c] of the input's, mirrored)."""
    r, s = image_size // common.LABEL_STRIDE, common.LABEL_STRIDE
    return {"label_size": r, "label_stride": s,
            "label_px_to_input_px": f"input = (label + 0.5) * {s} - 0.5, for x and for y "
                                    f"(pixel centres at integers in both: label px k covers "
                                    f"input px {s}k - 0.5 to {s}k + {s - 0.5})",
            "outputs": {t: {"shape": f"float32 (B, {r}, {r}, {TASKS[t].NUM_CHANNELS})",
                            **TASKS[t].OUTPUT_LAYOUT,
                            "channel_flip": [int(c) for c in TASKS[t].CHANNEL_FLIP]}
                        for t in tasks}}
