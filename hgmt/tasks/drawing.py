"""Pictures of predictions: colourised part and depth maps, skeletons, PCK curves.

Two kinds: quick OpenCV pictures of a crop's size (`colour_parts`, `colour_depth`,
`draw_skeleton`, `skeleton3d`: TensorBoard strips and video frames), and readable matplotlib
figures with units, colour bars and legends (`figure_*`: the prediction panel), each
PLOT_HEIGHT pixels tall, turned into pixels by `render` and laid out by `tile`. Figures are
built on matplotlib's object API (no pyplot state), so any thread may draw."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from hgmt import disk_space
from hgmt.sources import body

if TYPE_CHECKING:  # matplotlib is imported when a figure is first drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# 15 colours, every two at least 20 apart in CIELAB (Delta E 1976): background black, then the
# 14 parts in the order of body.PART_NAMES (head, torso, l_ arm (3), r_ arm (3), l_ leg (3),
# r_ leg (3)); a part is named by the person's own side: right parts warm (R > B), left cool
# (B > R), the arms bright and the legs darker or duller than the arm of their side.
PART_COLORS = np.array([
    [0, 0, 0], [90, 200, 70], [200, 70, 200],  # background, head green, torso magenta
    [40, 90, 250], [40, 190, 250], [160, 240, 255],  # l_ upper arm, forearm, hand
    [240, 50, 50], [255, 140, 30], [255, 225, 90],  # r_ upper arm, forearm, hand
    [40, 40, 140], [20, 110, 130], [120, 100, 190],  # l_ upper leg, lower leg, foot
    [140, 20, 40], [160, 90, 30], [210, 130, 120]], np.uint8)  # r_ upper leg, lower leg, foot


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


# A limb's colour by the side of the joint it ends at (the person's own side): right red, left
# blue, the trunk yellow; the quick pictures and the panel alike.
_SKELETON_RGB = {"r_": (230, 40, 40), "l_": (40, 90, 230), "": (220, 190, 30)}


def limb_rgb(joint: int) -> tuple[int, int, int]:
    """RGB (0-255) of the limb that ends at `joint` (an index of body.JOINT_NAMES)."""
    name = body.JOINT_NAMES[joint]
    return _SKELETON_RGB[name[:2] if name[:2] in ("r_", "l_") else ""]


def draw_skeleton(rgb: np.ndarray, joints: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Draws (16,2) joints (rgb's pixel coordinates) on a copy of rgb: right limbs red, left
    blue."""
    out = np.ascontiguousarray(rgb.copy())
    pts = [(int(round(x)), int(round(y))) for x, y in joints]
    for a, b in body.SKELETON:
        cv2.line(out, pts[a], pts[b], limb_rgb(b), thickness, cv2.LINE_AA)
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
    """PCKh curve {'thresholds': [...], 'mean': [...]} -> a 480 x 360 pixel PNG."""
    fig = figure(400, 300)  # 4 x 3 inches, saved at 120 dpi
    ax = fig.add_subplot()
    ax.plot(curve["thresholds"], curve["mean"], marker="o", ms=3)
    ax.set_xlabel("threshold (fraction of head segment)")
    ax.set_ylabel("PCKh")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    # A local path or an object-store URL; no partial file on a full disk.
    disk_space.write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=120), "wb")


# --- Readable figures (the prediction panel) -------------------------------------------------
PLOT_HEIGHT = 360  # pixels: the height of every panel figure
_DPI = 100


def figure(width_px: int, height_px: int = PLOT_HEIGHT) -> Figure:
    """An empty matplotlib Figure of width_px x height_px pixels on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def render(fig: Figure) -> np.ndarray:
    """A Figure -> (H,W,3) uint8 RGB of its pixels."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def tile(pictures: list[np.ndarray], max_width: int) -> np.ndarray:
    """Pictures of one height side by side, in rows no wider than max_width (a wider picture
    gets a row of its own), rows left-aligned on white -> (rows*H, W, 3) uint8."""
    rows, row = [], []
    for pic in pictures:
        if row and sum(p.shape[1] for p in row) + pic.shape[1] > max_width:
            rows.append(row)
            row = []
        row.append(pic)
    rows.append(row)
    width = max(sum(p.shape[1] for p in r) for r in rows)
    out = []
    for r in rows:
        strip = np.concatenate(r, axis=1)
        pad = np.full((strip.shape[0], width - strip.shape[1], 3), 255, np.uint8)
        out.append(np.concatenate([strip, pad], axis=1))
    return np.concatenate(out, axis=0)


def _limb_colour(joint: int) -> tuple[float, ...]:
    return tuple(c / 255 for c in limb_rgb(joint))


def _skeleton_lines(ax: Axes, xy: np.ndarray) -> None:
    """(16,2) joints drawn on ax: right limbs red, left blue, the trunk yellow."""
    for a, b in body.SKELETON:
        ax.plot(xy[[a, b], 0], xy[[a, b], 1], color=_limb_colour(b), lw=2.2,
                solid_capstyle="round")
    ax.plot(xy[:, 0], xy[:, 1], "o", ms=3, color="k")


def _image_axes(fig: Figure, rect: tuple[float, ...], rgb: np.ndarray, title: str,
                grey: bool = False) -> Axes:
    """Axes showing the (S,S,3) crop in its pixel frame (pixel centres at integers), titled;
    `grey`: faded grey, as the background of a map drawn over it."""
    ax = fig.add_axes(rect)
    s = rgb.shape[0]
    extent = (-0.5, s - 0.5, s - 0.5, -0.5)
    if grey:
        ax.imshow(rgb.mean(-1), cmap="gray", vmin=-255, vmax=510, extent=extent)
    else:
        ax.imshow(rgb, extent=extent)
    ax.set_xlim(-0.5, s - 0.5)
    ax.set_ylim(s - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title, fontsize=11)
    return ax


def figure_image(rgb: np.ndarray, title: str, joints: np.ndarray | None = None) -> Figure:
    """The (S,S,3) crop, titled, with (16,2) joints in its pixels drawn over it if given."""
    fig = figure(PLOT_HEIGHT)
    ax = _image_axes(fig, (0.02, 0.02, 0.96, 0.88), rgb, title)
    if joints is not None:
        _skeleton_lines(ax, np.asarray(joints))
    return fig


def figure_skeleton3d(joints_mm: np.ndarray, title: str = "3D pose") -> Figure:
    """(16,3) pelvis-relative camera mm (x right, y down, z away from the camera) -> front
    (x,y) and side (z,y) views on one millimetre scale, axes labelled in mm."""
    fig = figure(int(PLOT_HEIGHT * 1.5))
    joints_mm = np.asarray(joints_mm, np.float64)
    lo, hi = joints_mm.min(0), joints_mm.max(0)
    # One span for every axis of both views (one mm scale, equal aspect), each axis centred on
    # the joints' middle: the pelvis (0) can lie anywhere in their range, e.g. when crouching.
    span = max(float((hi - lo).max()), 400.0) * 1.15  # mm shown along each axis of a view
    mid = (lo + hi) / 2
    views = (("front", 0, "x (mm, right)"), ("side", 2, "z (mm, away from camera)"))
    for k, (view, axis, xlabel) in enumerate(views):
        ax = fig.add_axes((0.11 + 0.47 * k, 0.15, 0.4, 0.73))
        _skeleton_lines(ax, joints_mm[:, [axis, 1]])
        ax.set_xlim(mid[axis] - span / 2, mid[axis] + span / 2)
        ax.set_ylim(mid[1] + span / 2, mid[1] - span / 2)  # camera y points down
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.set_xlabel(xlabel, fontsize=9)
        if k == 0:
            ax.set_ylabel("y (mm, down)", fontsize=9)
        ax.set_title(f"{title}, {view}", fontsize=11)
    return fig


def figure_depth(depth_rel_mm: np.ndarray, rgb: np.ndarray, edges_mm: np.ndarray,
                 title: str = "depth") -> Figure:
    """(r,r) depth relative to the pelvis in mm (nan on background) over the greyed (S,S,3)
    crop, one colour per interval of `edges_mm` (the bins' edges), with a colour bar in mm:
    nearer than the pelvis red, farther blue."""
    import matplotlib
    from matplotlib import colors

    fig = figure(int(PLOT_HEIGHT * 1.3))
    ax = _image_axes(fig, (0.02, 0.02, 0.71, 0.88), rgb, title, grey=True)
    s = rgb.shape[0]
    cmap = matplotlib.colormaps["coolwarm_r"]
    image = ax.imshow(np.ma.masked_invalid(depth_rel_mm), cmap=cmap,
                      norm=colors.BoundaryNorm(edges_mm, cmap.N), interpolation="nearest",
                      extent=(-0.5, s - 0.5, s - 0.5, -0.5))
    bar = fig.colorbar(image, cax=fig.add_axes((0.76, 0.08, 0.035, 0.76)),
                       ticks=edges_mm[::2])
    bar.set_label("mm from the pelvis (+ farther)", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    return fig


def figure_parts(classes: np.ndarray, rgb: np.ndarray, names: tuple[str, ...],
                 title: str = "body parts") -> Figure:
    """(r,r) classes 0..len(names) (0 background) in PART_COLORS over the greyed (S,S,3)
    crop, with a legend of every class name; those absent from the map are marked "(none)"."""
    from matplotlib.patches import Patch

    fig = figure(int(PLOT_HEIGHT * 1.45))
    ax = _image_axes(fig, (0.01, 0.02, 0.66, 0.88), rgb, title, grey=True)
    s = rgb.shape[0]
    rgba = np.concatenate([PART_COLORS / 255.0, np.ones((len(PART_COLORS), 1))], axis=-1)
    rgba[0, 3] = 0.0  # background: the crop shows through
    ax.imshow(rgba[np.asarray(classes)], interpolation="nearest",
              extent=(-0.5, s - 0.5, s - 0.5, -0.5))
    present = set(np.unique(classes).tolist())
    handles = [Patch(facecolor=PART_COLORS[k] / 255, edgecolor="k", lw=0.3,
                     label=name.replace("_", " ") + ("" if k in present else " (none)"))
               for k, name in enumerate(names, start=1)]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.68, 0.47), fontsize=8,
               frameon=False, handlelength=1.2, labelspacing=0.4)
    return fig


__all__ = ["colour_parts", "colour_depth", "enlarge", "draw_skeleton", "skeleton3d",
           "plot_pck_curve", "PLOT_HEIGHT", "figure", "render", "tile", "figure_image",
           "figure_skeleton3d", "figure_depth", "figure_parts"]
