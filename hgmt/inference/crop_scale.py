"""How many metres a training window spans at the person, as prediction and export read it
from a workdir: the scale prior of 3D decoding on any image, where the person's distance is
read from their window's size (the pelvis depth = focal_px * crop metres / the window's side
in px, `predictor.Predictor`).

The trainer measures it on the run's training split as training starts and keeps it in the
workdir (`hgmt.data.crop_metres`, `workdirs.crop_metres_file`); `of_workdir` reads it back
(`with_source` also says whether it was measured), CROP_METRES for a workdir without it.
The figure is per training window (config.window): the references' box is about 0.84 of
hgmt's side, and spans as much less.
"""

from __future__ import annotations

import logging

from hgmt import workdirs
from hgmt.data import crop_metres

# Metres a training window (config.window) spans at the person for a workdir that has no
# measured figure: between what demo clips and a real SURREAL clip give (docs/evaluation.md,
# "Metres a training window spans"); 3D decoding on another dataset's model is off by the
# ratio of its figure.
CROP_METRES = {"hgmt": 2.35, "reference_box": 1.97}


def of_workdir(workdir: str, window: str = "hgmt", warn: bool = True) -> float:
    """The metres a training window (`window`, the run's config.window) of the workdir's run
    spans at the person: its file's figure; CROP_METRES's, with a warning (`warn`: for a
    model that predicts with it, `hgmt.tasks.reads_distance`), for a workdir without one
    (trained by an hgmt that did not measure it, or on batches handed to the trainer, not a
    built split) or with one of another window. `with_source` says which."""
    return with_source(workdir, window, warn)[0]


def with_source(workdir: str, window: str = "hgmt", warn: bool = True) -> tuple[float, str]:
    """-> (`of_workdir`'s figure in metres, where it comes from): a sentence starting
    "measured:" with the file's records and standard error, or "assumed:" for CROP_METRES's
    where the workdir has no file of `window` (warned about when `warn`, as `of_workdir`
    says)."""
    stored = crop_metres.read(workdir)
    measured_on = None if stored is None else stored.get("window", "hgmt")
    if measured_on != window:
        assumed = CROP_METRES[window]
        why = (f"the workdir has no {workdirs.CROP_METRES_FILE} (it was not trained by an "
               f"hgmt.main that measures it)" if stored is None else
               f"the workdir's {workdirs.CROP_METRES_FILE} measures window {measured_on}, not "
               f"{window}")
        if warn:
            logging.warning(
                "%s: %s; 3D decoding assumes a training window (%s) spans %.2f m at the "
                "person, so the pelvis depth and the 3D joints' x and y are off by the ratio "
                "of what this run's training data spans to that (docs/evaluation.md has demo "
                "and SURREAL clips' figures); rerunning hgmt.main on the workdir writes it",
                workdirs.crop_metres_file(workdir), why, window, assumed)
        return assumed, (f"assumed: hgmt's default for window {window} "
                         f"(crop_scale.CROP_METRES), as {why}; 3D decoding is off by the "
                         f"ratio of what the run's training windows span to it")
    return float(stored["crop_metres"]), _measured(stored)


def _measured(stored: dict) -> str:
    """The source sentence of a figure the workdir's file holds (`save`d from `measure`;
    each detail the file lacks is left out)."""
    def number(key: str) -> float | None:
        value = stored.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    records, error, dataset = number("records"), number("standard_error"), stored.get("dataset")
    what = "the mean over " + (f"{records} training records" if records is not None else
                               "the training records")
    if isinstance(dataset, str):
        what += f" of dataset {dataset}"
    if error is not None:
        what += f", standard error {error:.4f} m"
    return f"measured: {what} (the workdir's {workdirs.CROP_METRES_FILE})"
