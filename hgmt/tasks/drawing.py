"""Pictures of predictions: colourised part and depth maps, skeletons, PCK curves.

Arrays in, arrays or PNG files out; matplotlib only for plots (Agg backend)."""

from __future__ import annotations

import cv2
import numpy as np

from hgmt.sources import surreal

# 15 distinct colours: background black, then the 14 parts (right parts warm, left cool).
# Order of surreal.PART_NAMES: head, torso, l_ arm (3), r_ arm (3), l_ leg (3), r_ leg (3).
PART_COLORS = np.array([
    [0, 0, 0], [230, 200, 60], [200, 70, 200], [60, 110, 240], [60, 200, 240], [140, 240, 240],
    [240, 60, 60], [250, 140, 60], [250, 210, 120], [30, 60, 200], [30, 170, 200],
    [120, 220, 220], [200, 30, 30], [240, 120, 30], [255, 200, 80]], np.uint8)


def colour_parts(classes: np.ndarray) -> np.ndarray:
    """(H,W) part classes 0..14 -> (H,W,3) uint8."""
    return PART_COLORS[np.clip(classes, 0, len(PART_COLORS) - 1)]


def colour_depth(classes: np.ndarray) -> np.ndarray:
    """(H,W) depth classes 0..19 (0 background) -> (H,W,3) uint8, near bright, far dark."""
    v = np.where(classes > 0, 255 - (classes.astype(np.float32) - 1) * 10, 0).astype(np.uint8)
    out = cv2.applyColorMap(v, cv2.COLORMAP_INFERNO)[..., ::-1].copy()
    out[classes == 0] = 0
    return out


def enlarge(picture: np.ndarray, size: int) -> np.ndarray:
    """A label-map picture (r,r[,3]) shown at (size,size[,3]), each label pixel a block."""
    return cv2.resize(picture, (size, size), interpolation=cv2.INTER_NEAREST)


def draw_skeleton(rgb: np.ndarray, joints: np.ndarray, scale: float = 1.0,
                  thickness: int = 2) -> np.ndarray:
    """Draws (16,2) joints (pixel coords / scale) on a copy of rgb: right limbs red, left blue."""
    out = np.ascontiguousarray(rgb.copy())
    pts = [(int(round(x * scale)), int(round(y * scale))) for x, y in joints]
    for a, b in surreal.SKELETON:
        name = surreal.JOINT_NAMES[b]
        colour = (230, 40, 40) if name.startswith("r_") else (40, 90, 230) if name.startswith(
            "l_") else (240, 220, 40)
        cv2.line(out, pts[a], pts[b], colour, thickness, cv2.LINE_AA)
    for p in pts:
        cv2.circle(out, p, thickness + 1, (255, 255, 255), -1, cv2.LINE_AA)
    return out


def skeleton3d(joints_mm: np.ndarray, size: int) -> np.ndarray:
    """(16,3) root-relative mm -> (size,size,3) uint8: front view (x,y) left, side (z,y) right."""
    out = np.full((size, size, 3), 255, np.uint8)
    half = size // 2
    extent = max(float(np.abs(joints_mm[:, :2]).max()), 200.0) * 1.15
    for k, axes in enumerate(((0, 1), (2, 1))):
        view = np.zeros((size, half, 3), np.uint8) + 255
        pts = joints_mm[:, axes] / extent * (half / 2) + [half / 2, size / 2]
        view = draw_skeleton(view, pts, thickness=1)
        cv2.putText(view, "front" if k == 0 else "side", (3, 12), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, (0, 0, 0), 1, cv2.LINE_AA)
        out[:, k * half:(k + 1) * half] = view
    return out


def plot_pck_curve(curve: dict, path: str) -> None:
    """PCKh curve {'thresholds': [...], 'mean': [...]} -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=120)
    ax.plot(curve["thresholds"], curve["mean"], marker="o", ms=3)
    ax.set_xlabel("threshold (fraction of head segment)")
    ax.set_ylabel("PCKh")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


__all__ = ["colour_parts", "colour_depth", "draw_skeleton", "skeleton3d",
           "plot_pck_curve"]
