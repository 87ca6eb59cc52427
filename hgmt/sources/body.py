"""hgmt's body labels, taken from SURREAL's: the 16 joints from SMPL's 24 and the 14 body-part
classes (+ background) from SURREAL's 24 segments, named by the person's own side, with the
permutations of a horizontal flip. docs/surreal_format.md says how SURREAL's files hold them.
"""

from __future__ import annotations

import numpy as np

# --- Joints: 16 MPII-order joints taken from the 24 SMPL joints (0-based SMPL index).
JOINT_NAMES = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder",
    "l_elbow", "l_wrist",
)  # fmt: skip
SMPL_TO_JOINT = np.array([7, 4, 1, 2, 5, 8, 0, 6, 12, 15, 20, 18, 16, 17, 19, 21], np.int32)
PELVIS = JOINT_NAMES.index("pelvis")
HEAD_TOP = JOINT_NAMES.index("head_top")
UPPER_NECK = JOINT_NAMES.index("upper_neck")
# Skeleton edges (pairs of indices into JOINT_NAMES) for drawing.
SKELETON = (
    (0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
    (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15),
)  # fmt: skip


def _flip_permutation(names: tuple[str, ...]) -> np.ndarray:
    """Index permutation swapping every ``r_*`` name with its ``l_*`` twin."""
    def twin(name: str) -> str:
        if name.startswith("r_"):
            return "l_" + name[2:]
        if name.startswith("l_"):
            return "r_" + name[2:]
        return name
    return np.array([names.index(twin(n)) for n in names], np.int32)


JOINT_FLIP = _flip_permutation(JOINT_NAMES)

# --- Body parts: 14 foreground classes (+ background 0) from the 24 SMPL segments.
# Named by the person's own side, like the joints. SURREAL's renders swap SMPL's left and right
# (gulvarol/surreal datageneration/misc/smpl_relations/smpl_relations.py: "note that left/right
# are swapped"): the segment SMPL calls "rightArm" (raw 18) covers the rendered person's *left*
# upper arm, just as SMPL joint 20 (0-based; "L_Wrist") is the person's right wrist (r_wrist above).
# So class 3 (raw 18, SMPL rightArm) is l_upper_arm and r_wrist lies on class 8 (r_hand).
# See docs/surreal_format.md.
PART_NAMES = (
    "head", "torso", "l_upper_arm", "l_forearm", "l_hand", "r_upper_arm", "r_forearm",
    "r_hand", "l_upper_leg", "l_lower_leg", "l_foot", "r_upper_leg", "r_lower_leg", "r_foot",
)  # fmt: skip
# The names of the part classes: class c is PART_CLASS_NAMES[c], 0 the background.
PART_CLASS_NAMES = ("background", *PART_NAMES)
NUM_PARTS = len(PART_CLASS_NAMES)  # with background
NUM_SMPL_SEGMENTS = 24
# SURREAL's segment names, raw value 1..24 (SMPL's, as in the released _segm.mat; index 0 is
# background). Raw value v is the region of SMPL joint v - 1.
SMPL_SEGMENT_NAMES = (
    "background", "hips", "leftUpLeg", "rightUpLeg", "spine", "leftLeg", "rightLeg", "spine1",
    "leftFoot", "rightFoot", "spine2", "leftToeBase", "rightToeBase", "neck", "leftShoulder",
    "rightShoulder", "head", "leftArm", "rightArm", "leftForeArm", "rightForeArm", "leftHand",
    "rightHand", "leftHandIndex1", "rightHandIndex1",
)  # fmt: skip
# What l_ and r_ of JOINT_NAMES and PART_NAMES mean, for a consumer of the names (an export's
# hgmt.json), who cannot tell from a name alone that the swap above was undone.
SIDES = ("l_ and r_ are the person's own left and right (the rendered person's anatomical "
         "side, not the image's; SURREAL's renders swap SMPL's left and right, and hgmt's "
         "names follow the person: docs/surreal_format.md, Left and right)")
# Raw 1-based SMPL segment value -> part class; index 0 (background) -> 0. SMPL "left*"
# segments map to r_* classes and "right*" to l_* (the swap above).
SEGM_TO_PART = np.array(
    [0, 2, 12, 9, 2, 13, 10, 2, 14, 11, 2, 14, 11, 2, 2, 2, 1, 6, 3, 7, 4, 8, 5, 8, 5], np.uint8
)
# Permutation of the 15 classes (background first) under a horizontal flip.
PART_FLIP = np.concatenate([[0], 1 + _flip_permutation(PART_NAMES)]).astype(np.int32)
