"""The versions of hgmt's metric definitions under each protocol: which version a summary's
numbers were made under (`metrics_version`, recorded in the summary by
`hgmt.evaluation.evaluator`), and what changed since an older one (`metrics_changes`), for
`hgmt.report` and the trainer's evaluators, which compare only numbers of one version."""

from __future__ import annotations

from hgmt.evaluation import protocols

# The versions of hgmt's metric definitions: each with the protocols whose numbers it
# changed and what it changed from the one before. A summary records the version of its
# protocol's definitions it was made under (its `metrics_version`: `metrics_version` below;
# one without the field is version 1), and a change adds a version, so that numbers of two
# definitions are not compared (hgmt.report refuses them, and its report says what changed
# since its runs'), while a change to one protocol leaves the others' numbers current.
METRICS_CHANGES = {
    2: (protocols.PROTOCOLS,
        "a joint in the outer half of a label map's edge pixels is visible (version 1: only "
        "joints in [0, r - 1], r the label map's side)"),
    3: (("surreal",),
        "surreal protocol: test batch 1, SURREAL's final evaluation (eval.sh), not 6: every "
        "example evaluated"),
    4: (("bodynet", "surreal"),
        "bodynet and surreal protocols: the segm and depth label maps are cut as the "
        "references cut theirs (crop(..., 'simple'): the map shrunk by top-left sampling, a "
        "block copied at an integer corner), not by hgmt's nearest warp of their window"),
    5: (("bodynet", "surreal"),
        "bodynet and surreal protocols: the input image is cut as the references cut theirs "
        "(crop(..., 'bilinear'): a block copied at integer corners and resized by torch/image's "
        "bilinear scale, ends onto ends, the frame shrunk first from a 512 px window), not by "
        "hgmt's bilinear warp of their window"),
}


def metrics_version(protocol: str) -> int:
    """The version of `protocol`'s metric definitions today: the latest of METRICS_CHANGES
    that changed its numbers (1 when none did)."""
    return max((v for v, (changed, _) in METRICS_CHANGES.items() if protocol in changed),
               default=1)


def metrics_changes(protocol: str, since: int) -> list[tuple[int, str]]:
    """[(version, what it changed)] of the changes to `protocol`'s numbers after version
    `since`, oldest first."""
    return [(v, what) for v, (changed, what) in sorted(METRICS_CHANGES.items())
            if v > since and protocol in changed]
