"""An image file read as the model takes it (`read_image`: RGB uint8, upright), with an error
that says why when it cannot be (`UndecodableImage`: empty, damaged or cut short, not an
image OpenCV reads)."""

from __future__ import annotations

import os

import cv2
import numpy as np


class UndecodableImage(ValueError):
    """A file read as an image is not one OpenCV decodes."""


# The first bytes of the image formats OpenCV decodes that a photo or a frame comes in, and
# their files' suffixes: a file of such a suffix that starts so but does not decode is
# damaged or cut short (a camera's raw file starts as a TIFF does, but is named otherwise).
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP",
              b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"GIF87a": "GIF", b"GIF89a": "GIF"}
SUFFIXES = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "BMP": (".bmp", ".dib"),
            "TIFF": (".tif", ".tiff"), "GIF": (".gif",), "WebP": (".webp",)}


def read_image(path: str) -> np.ndarray:
    """Any format OpenCV reads -> RGB uint8 (H,W,3), upright: turned by its EXIF orientation
    as viewers show it (OpenCV's decoding applies it: a phone photo stored 4000 x 3000 with
    orientation 6 is read 3000 wide and 4000 tall), grey as RGB, 16 bits at 8, an alpha
    channel dropped (transparent pixels as the colours they store); a clear error when it
    cannot
    (UndecodableImage when the file is there but is empty, damaged or cut short, or not such
    an image; a ValueError when OpenCV refuses its header, e.g. for more pixels than it
    decodes; MemoryError when the decoded image cannot be allocated). The bytes are read
    by Python and decoded by OpenCV: cv2.imread crashes the process on a file name that is
    not UTF-8 (Python's surrogate escapes)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: a folder; give the image files in it (e.g. "
                                f"{os.path.join(path, '*')}, which a shell expands)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} not found")
    data = np.fromfile(path, np.uint8)
    if not data.size:
        raise UndecodableImage(f"image {path} is empty (0 bytes)")
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as e:  # OpenCV raises for a header it refuses, before any decoding
        raise _refused(path, e) from None
    if bgr is None:
        head = data[:8].tobytes()
        kind = next((k for sig, k in SIGNATURES.items() if head.startswith(sig)), None)
        if kind is None and head[:4] == b"RIFF" and data[8:12].tobytes() == b"WEBP":
            kind = "WebP"
        if kind is not None and path.lower().endswith(SUFFIXES[kind]):
            raise UndecodableImage(f"image {path} is a {kind} file that does not decode: it is "
                                   f"damaged or cut short (copy or export it again)")
        raise UndecodableImage(f"image {path} cannot be decoded (not an image OpenCV reads)")
    return bgr[..., ::-1].copy()


def _refused(path: str, error: cv2.error) -> Exception:
    """The error of the image at `path` that OpenCV refused to decode with `error`: a
    MemoryError when it could not allocate the image (the host's fault, not the file's); a
    ValueError naming the fix for an image of more pixels than OpenCV decodes; else a
    ValueError with OpenCV's reason."""
    if error.code == cv2.Error.StsNoMem:
        return MemoryError(f"OpenCV could not allocate the decoded image of {path}")
    if "CV_IO_MAX_IMAGE_PIXELS" in (error.err or ""):
        return ValueError(f"image {path} has more pixels than OpenCV decodes (2^30 by "
                          f"default): scale it down, or set the environment variable "
                          f"OPENCV_IO_MAX_IMAGE_PIXELS to its pixel count if the host's "
                          f"memory holds it (3 bytes a pixel, and more while it is predicted)")
    return ValueError(f"image {path} cannot be decoded (OpenCV: {error.err or error.msg})")


