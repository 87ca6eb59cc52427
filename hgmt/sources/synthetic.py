"""SURREAL-format demo data: procedurally animated humanoids rendered into SURREAL's files.

Real SURREAL cannot be downloaded here (and its licence forbids redistribution), so everything
downstream is developed on clips written by this module in SURREAL's exact layout and formats:

    python -m hgmt.sources.synthetic --out_dir=DIR --clips_per_split=4 --frames_per_clip=30 \\
        --seed=0

writes ``DIR/cmu/{train,val,test}/run0/<seq>/<seq>_c<NNNN>`` + ``.mp4`` (H.264),
``_info.mat``, ``_depth.mat`` and ``_segm.mat``, into a DIR whose ``cmu/{train,val,test}``
hold nothing yet (`ClipsExist` otherwise). DIR is the tree, SURREAL's root (what ``tfds build
--manual_dir`` takes): the command refuses a DIR named ``cmu``, whose clips would go into
``cmu/cmu``. As in SURREAL, whose val clips are all test clips
(docs/surreal_format.md), ``val`` holds copies of test clips: here of every one.

The clips show one person each, `hgmt.sources.synthetic_person`'s: a capsule body on the
SMPL skeleton, animated, dressed and ray-cast into SURREAL's RGB, depth and segment maps.

The ``_info.mat`` has SURREAL's keys, dtypes and shapes, but some of its values are this
generator's own: ``camDist`` is the distance from ``camLoc`` to the first frame's pelvis, where
SURREAL's is the camera distance it drew (about the pelvis's depth + 1 m; gulvarol/surreal
datageneration/main_part1.py); ``zrot`` is the body's yaw (0: facing the camera) and ``pose``
the joints' axis-angle rotations in this skeleton's body frame, not SURREAL's root rotation and
SMPL pose; ``shape`` holds the skeleton's height and limb scales (then 5 random numbers) and
``light`` the light's direction and ambient term (then zeros). hgmt copies ``zrot``, ``pose``
and ``shape`` into the built records and reads none of these values for a label, loss or
metric; ``camDist`` and ``light`` it does not read.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
import scipy.io

from hgmt import cores, disk_space, stops
from hgmt.sources import camera, surreal, synthetic_person

if TYPE_CHECKING:
    from absl import flags

# The version of what the generator writes: demo data of an older one is written again
# (`hgmt.data.demo`). 2: the depth maps hold the distance from the camera centre, as SURREAL's
# (1 held the planar camera depth z). 3: val holds copies of the test clips, as SURREAL's val
# holds test clips (2 wrote val clips of its own; train and test are 2's, byte for byte).
FORMAT_VERSION = 3

def write_video(path: str, frames: np.ndarray) -> None:
    """(T,240,320,3) uint8 RGB -> H.264 mp4 (yuv420p) at 30 fps, as SURREAL's videos."""
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        # x264's output depends on its thread count, which it sets from the CPUs it finds:
        # one thread, so that a seed gives the same clip on any machine and in any process,
        # but for one variation: in some processes the bottom-right macroblock of some clips
        # comes out otherwise (62-65 dB PSNR from the usual frames), by every sign memory the
        # encoder reads uninitialised (with a fixed malloc mmap threshold it never varied).
        stream.codec_context.thread_count = 1
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def write_clip(stem: str, motion: synthetic_person.Motion, look: synthetic_person.Look,
               clip_no: int) -> None:
    """Renders every frame of a clip and writes its four SURREAL files next to ``stem``."""
    frames = motion.joints_world.shape[0]
    rendered = [synthetic_person.render_frame(motion, look, t) for t in range(frames)]
    paths = surreal.clip_paths(stem)
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    write_video(paths["video"], np.stack([r[0] for r in rendered]))
    scipy.io.savemat(paths["depth"], {f"depth_{t + 1}": r[1] for t, r in enumerate(rendered)},
                     do_compression=True)
    scipy.io.savemat(paths["segm"], {f"segm_{t + 1}": r[2] for t, r in enumerate(rendered)},
                     do_compression=True)
    joints3d = motion.joints_world.astype(np.float32)
    joints2d = np.round(camera.project(joints3d, motion.cam_loc)).astype(np.float32)
    pose = synthetic_person.axis_angle(motion.local_rot).reshape(frames, 72)
    names = np.empty((1, frames), object)
    names[0, :] = [np.array(["synthetic/background.jpg"])] * frames
    cloth = np.empty((1, frames), object)
    cloth[0, :] = [np.array(["synthetic/cloth.jpg"])] * frames
    cam_dist = np.linalg.norm(motion.cam_loc - joints3d[0, 0])
    # (coordinate, joint, frame), as MATLAB saved them: a clip of one frame has no frame axis
    # (MATLAB drops a trailing singleton dimension; the 2-D fields keep theirs).
    joints2d, joints3d = (np.transpose(j, (2, 1, 0)) for j in (joints2d, joints3d))
    if frames == 1:
        joints2d, joints3d = joints2d[..., 0], joints3d[..., 0]
    scipy.io.savemat(paths["info"], {
        "sequence": np.array([os.path.basename(stem)]),
        "clipNo": np.array([[clip_no]], np.uint8),
        "source": np.array(["cmu"]),
        "bg": names,
        "gender": np.full((frames, 1), clip_no % 2, np.uint8),
        "light": np.tile(np.concatenate([look.light, [look.ambient], np.zeros(5)]),
                         (frames, 1)).T.astype(np.float32),
        "stride": np.array([[50]], np.uint8),
        "camDist": np.array([[cam_dist]], np.float32),
        "camLoc": motion.cam_loc.reshape(3, 1).astype(np.float32),
        "joints2D": joints2d,
        "joints3D": joints3d,
        "pose": pose.T.astype(np.float32),
        "zrot": np.full((frames, 1), motion.zrot, np.float32),
        "cloth": cloth,
        "shape": np.tile(motion.shape, (frames, 1)).T.astype(np.float32),
    })


class ClipsExist(FileExistsError):
    """A folder the generator is to write clips into already holds files (real SURREAL clips,
    or demo clips of another run): writing there would overwrite some of them (the demo's clip
    names are SURREAL's) and leave the others among the new clips. Names the folder and the
    fix; `folder` is that folder."""

    def __init__(self, folder: str, out_dir: str):
        super().__init__(
            f"{folder} already holds files (real SURREAL clips, or demo clips of another "
            f"run): the demo's clips, named as SURREAL's (e.g. run0/01_01/01_01_c0001), would "
            f"overwrite those of the same names and leave the others among them. Nothing was "
            f"written. Give another --out_dir than {out_dir}, or remove {folder}")
        self.folder = folder


def check_out_dir(out_dir: str, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
    """Raises ClipsExist naming the first of ``out_dir/cmu/<split>`` that holds anything."""
    for split in splits:
        folder = os.path.join(out_dir, "cmu", split)
        if os.path.isdir(folder) and os.listdir(folder):
            raise ClipsExist(folder, out_dir)


def check_tree_named(out_dir: str) -> None:
    """Ends the command in one line when `--out_dir` names the tree's `cmu` folder rather
    than the tree (SURREAL's root, which holds cmu/ and is what `tfds build --manual_dir`
    takes): the clips would go into <tree>/cmu/cmu/<split>, where no build finds them."""
    if os.path.basename(os.path.normpath(out_dir)) == "cmu":
        tree = os.path.dirname(os.path.normpath(out_dir)) or "."
        raise SystemExit(f"error: --out_dir={out_dir} is a cmu folder: the clips go into "
                         f"<out_dir>/cmu/{{train,val,test}}, as in SURREAL's tree; give the "
                         f"folder that is to hold cmu/, --out_dir={tree} (the tree tfds build "
                         f"takes as --manual_dir)")


def _write_seeded_clip(job: tuple) -> str:
    """One clip of `generate`: (stem, seed, split index, clip index k, frames, zrot_max_deg,
    clip number, stems to copy the clip to) -> stem. Top-level, so that worker processes can
    run it."""
    stem, seed, split_index, k, frames, zrot_max_deg, clip_no, copies = job
    rng = np.random.default_rng([seed, split_index, k])
    write_clip(stem, synthetic_person.make_motion(rng, frames, zrot_max_deg),
               synthetic_person.make_look(rng), clip_no)
    for copy in copies:
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        for kind, path in surreal.clip_paths(stem).items():
            shutil.copyfile(path, surreal.clip_paths(copy)[kind])
    return stem


def _ignore_stop_signals(signums: tuple[int, ...]) -> None:
    """A worker of `generate`: `signums` (of Ctrl-C and SIGTERM, those the process that
    started it handles) are left to that process."""
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)


def _handled_stop_signals() -> tuple[int, ...]:
    """Of Ctrl-C and SIGTERM, those this process does not leave at the system's default (which
    ends it where it stands): those it handles (Python's KeyboardInterrupt,
    `stops.sigterm_cleans_up`, a caller's handler) or ignores."""
    return tuple(s for s in (signal.SIGINT, signal.SIGTERM)
                 if signal.getsignal(s) not in (signal.SIG_DFL, None))


def check_settings(clips_per_split: int, frames: int, seed: int, prefix: str = "") -> None:
    """Raises ValueError naming the setting (`prefix` + its name, e.g. 'config.demo.') when
    `generate` cannot make clips of these: no clip, no frame, or a negative seed."""
    for name, value, least in (("clips_per_split", clips_per_split, 1), ("frames", frames, 1),
                               ("seed", seed, 0)):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"{prefix}{name}={value!r} must be an integer of at least {least}")


def generate(out_dir: str, clips_per_split: int = 4, frames: int = 30, seed: int = 0,
             splits: tuple[str, ...] = ("train", "val", "test"),
             zrot_max_deg: float = synthetic_person.ZROT_MAX_DEG, workers: int = 1) -> list[str]:
    """Writes ``clips_per_split`` clips of ``frames`` frames into each split; returns their
    stems, split by split in the order of ``splits``. ``zrot_max_deg``: see
    `synthetic_person.make_motion` (180: SURREAL's whole circle). ``workers`` > 1 writes the
    clips in that many processes (started fresh, not forked: the caller may run JAX). Raises
    ClipsExist, before writing anything, when a split's folder ``out_dir/cmu/<split>`` already
    holds files.

    Deterministic for a given seed: clip k of the split at position i of ``splits`` always
    gets the random stream [seed, i, k], whatever the number of workers. Clip names follow
    SURREAL (sequence ``<NN>_<NN>``, clip ``c<NNNN>``): train and test each use sequences of
    their own (``<i + 1>_<k // 2 + 1>``). SURREAL's val is a subset of its test split (all its
    clips are test clips, docs/surreal_format.md), and so is the demo's: ``val`` holds a copy
    of every test clip, under the test clip's name, which needs ``test`` in ``splits``.
    """
    check_settings(clips_per_split, frames, seed)
    if "val" in splits and "test" not in splits:
        raise ValueError(f"splits={splits}: val holds copies of the test clips, as SURREAL's "
                         f"val holds test clips; add 'test'")
    check_out_dir(out_dir, splits)
    jobs, stems = [[] for _ in splits], {split: [] for split in splits}
    for split_index, split in enumerate(splits):
        if split == "val":
            continue
        for k in range(clips_per_split):
            seq = f"{split_index + 1:02d}_{k // 2 + 1:02d}"
            clip_no = k % 2 + 1
            name = os.path.join("run0", seq, f"{seq}_c{clip_no:04d}")
            stems[split].append(os.path.join(out_dir, "cmu", split, name))
            copies = []
            if split == "test" and "val" in splits:
                copies.append(os.path.join(out_dir, "cmu", "val", name))
                stems["val"].append(copies[-1])
            jobs[split_index].append((stems[split][-1], seed, split_index, k, frames,
                                      zrot_max_deg, clip_no, copies))
    if workers <= 1 or clips_per_split <= 1:
        for job in (job for split_jobs in jobs for job in split_jobs):
            _write_seeded_clip(job)
    else:
        # Split after split, as in one process.
        # The workers ignore Ctrl-C and SIGTERM where this process handles them (a
        # terminal's Ctrl-C reaches them all, a scheduler's SIGTERM may): this process stops
        # them, the clips they are writing finished and the others cancelled, so that its
        # caller may remove what was written with no worker still writing, and no worker
        # prints a traceback of its own. A signal that ends this process at once (SIGTERM
        # at its default) ends the workers too, which would otherwise wait for work for ever.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
                min(workers, clips_per_split), mp_context=context,
                initializer=_ignore_stop_signals, initargs=(_handled_stop_signals(),)) as pool:
            try:
                for split_jobs in jobs:
                    list(pool.map(_write_seeded_clip, split_jobs))
            except BaseException:
                # Held: a second Ctrl-C would leave this wait, and this process end with its
                # workers still writing, then waiting for work for ever.
                with stops.stop_signals_held():
                    pool.shutdown(wait=True, cancel_futures=True)
                raise
    return [stem for split in splits for stem in stems[split]]


def _define_flags(fv: flags.FlagValues) -> None:
    from absl import flags

    flags.DEFINE_string("out_dir", None, "output directory (gets cmu/{train,val,test}/...)",
                        flag_values=fv, required=True)
    flags.DEFINE_integer("clips_per_split", 4, "clips per split (val's are copies of test's)",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("frames_per_clip", 30, "frames per clip", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("seed", 0, "random seed", lower_bound=0, flag_values=fv)
    flags.DEFINE_float("zrot_max_deg", synthetic_person.ZROT_MAX_DEG, "bodies turn uniformly "
                       "within +- this many degrees of facing the camera (180: SURREAL's "
                       "whole circle)",
                       lower_bound=0.0, upper_bound=180.0, flag_values=fv)
    flags.DEFINE_integer("workers", cores.usable_cores(), "processes writing clips "
                         "(default: the cores this process may use)", lower_bound=1,
                         flag_values=fv)


# The errors of a folder that cannot be written (`disk_space.UNWRITABLE_CODES`, a full disk or
# quota, a file or folder in the way), for which `_unwritable` names another folder as the fix.
_WRITE_ERRNOS = disk_space.UNWRITABLE_CODES | {errno.ENOSPC, errno.EDQUOT, errno.EEXIST,
                                               errno.EISDIR}


def _remove_written(out_dir: str, existed: dict[str, bool]) -> None:
    """Removes what a generation into `out_dir` that stopped (a failed write, Ctrl-C,
    SIGTERM) wrote: everything in its split folders ``cmu/<split>``, which were empty or
    missing before (`generate` refuses others; `existed`: which were there), so that a rerun
    of the same command is not refused for holding clips (`ClipsExist`). The folders that
    were there stay."""
    for split, was_there in existed.items():
        folder = os.path.join(out_dir, "cmu", split)
        if not was_there:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):  # a folder it cannot list holds none of ours
                for entry in os.listdir(folder):
                    shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)


def _unwritable(out_dir: str, error: OSError, existed: dict[str, bool]) -> str:
    """The one line of a generation into `out_dir` that failed to write (`error`), after
    removing what it wrote (`_remove_written`)."""
    _remove_written(out_dir, existed)
    what = error.strerror or str(error)
    where = f" ({error.filename})" if error.filename else ""
    fix = ("Give a folder on a writable file system with room for the clips"
           if error.errno in _WRITE_ERRNOS else "Mend what the error names and run it again")
    return (f"error: --out_dir={out_dir}: cannot write the demo clips: {what}{where}. Nothing "
            f"written is left in {os.path.join(out_dir, 'cmu')}/{{train,val,test}}. {fix}")


def main(argv: list[str] | None = None) -> int:
    """`python -m hgmt.sources.synthetic --out_dir=DIR [--clips_per_split=N]
    [--frames_per_clip=F] [--seed=S] [--zrot_max_deg=D] [--workers=N]`: prints one JSON line
    (the clips written, val's copies included; the frames rendered and their rate). A DIR
    whose cmu/{train,val,test} holds files is refused in one line (`ClipsExist`), exit 1, and
    so is a DIR named cmu (`check_tree_named`); one it cannot write (read-only, full, a file in
    the way) ends in one line too, the clips it had written removed (`_unwritable`), and so do
    Ctrl-C (status 130) and SIGTERM (the process then dies of it), so that the same command
    run again writes the clips rather than refusing the folder."""
    from hgmt import cli

    args, _ = cli.parse(_define_flags, argv, "Write SURREAL-format demo clips.")
    cli.check_output_folder("out_dir", args.out_dir)
    check_tree_named(args.out_dir)
    start = time.perf_counter()
    splits = ("train", "val", "test")
    existed = {split: os.path.isdir(os.path.join(args.out_dir, "cmu", split)) for split in splits}
    command = argv is None
    with cli.faults_in_one_line(ClipsExist), stops.sigterm_cleans_up(), \
            stops.interrupted_in_one_line(command):
        try:
            stems = generate(args.out_dir, args.clips_per_split, args.frames_per_clip, args.seed,
                             splits, zrot_max_deg=args.zrot_max_deg, workers=args.workers)
        except ClipsExist:  # refused before writing: the clips there are not ours to remove
            raise
        except OSError as e:  # a read-only or full file system, a file in the way
            raise SystemExit(_unwritable(args.out_dir, e, existed)) from None
        except BaseException:  # Ctrl-C, SIGTERM: the same command run again writes them all
            _remove_written(args.out_dir, existed)
            raise
    seconds = time.perf_counter() - start
    # The frames rendered: val's clips are copies of test's.
    frames = sum(surreal.parse_stem(s).split != "val" for s in stems) * args.frames_per_clip
    print(json.dumps({"out_dir": args.out_dir, "clips": len(stems), "frames": frames,
                      "seconds": round(seconds, 2), "frames_per_s": round(frames / seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
