"""The input gate: never a silent mask on the wrong input. Each film gets a :class:`Status`:

- ``refused`` (no mask is made; the reason says why): from the DICOM attributes, a Modality that is
  no projection radiograph (not CR, DX or RG), a lateral ``ViewPosition`` (or view code), no pixel
  data, several frames, a palette-colour image; from the pixels of any input, a colour photograph
  (real colour, not grey stored as RGB).
- ``flagged`` (a mask is made, to be looked at): an oblique view, or an image outside what the
  training films look like: too little or too much fine detail (a smooth gradient; noise or a page
  of text), too much of one grey level (a blank page, a background), background all round the body
  (a CT slice, an object photographed on a dark table), or a shape no detector has.
- ``ok`` otherwise.

The image limits were chosen on the cxr-v7 train and val films and tested on held-out films, shifted
films and synthetic non-radiographs by ``scripts/research/gate_limits.py`` (docs/dicom.md, "The
input gate").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from lungseg.data.images import COLOUR_SPREAD, histogram, to_gray, window

if TYPE_CHECKING:
    from lungseg.dicom.read import DicomFilm

STATUSES = ("ok", "flagged", "refused")
# Projection radiography: computed (CR), digital (DX) and film (RG, digitised).
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT"})
OBLIQUE_VIEWS = frozenset({"RLO", "LLO", "OBLIQUE"})
COLOUR_PHOTOMETRICS = frozenset({"PALETTE COLOR"})
FEATURE_SIZE = 128  # detail is measured on the film resized to this square (any input size)
DETAIL_SIGMA = 1.5  # px at FEATURE_SIZE: what a Gaussian blur this wide removes is "fine detail"
CONTENT_LEVEL = 16  # of 255 after the window rule: darker is background (air, shutters, padding)
CONTENT_SHARE = 0.05  # a row or column with more content than this is inside the content box
EDGE_BOX = 64  # dark_edge resizes the content box to this square ...
EDGE_BAND = 4  # ... and looks at bands this wide (px) along its four sides


@dataclass(frozen=True)
class Status:
    """The gate's verdict on one film: ``status`` is "ok", "flagged" or "refused"; ``reason`` says
    why."""

    status: str = "ok"
    reason: str = ""

    @property
    def refused(self) -> bool:
        return self.status == "refused"

    @property
    def flagged(self) -> bool:
        return self.status == "flagged"


OK = Status()


@dataclass(frozen=True)
class ImageLimits:
    """Where a film's image features must lie (:func:`image_features`): each the most extreme value
    among the cxr-v7 train and val films, moved out by a factor of two (of the value for ``detail``,
    of the odds for the shares); ``max_aspect`` and ``max_colour`` are format rules (every training
    film is square and grey)."""

    min_detail: float = 0.055
    max_detail: float = 0.587
    max_flat: float = 0.184
    max_dark_edge: float = 0.4
    max_aspect: float = 2.0  # long over short side; detector formats are at most 4:3
    max_colour: float = 0.05  # share of pixels in real colour: above it, a colour photograph


def colour_share(image: np.ndarray) -> float:
    """The share of pixels whose colour channels differ by more than ``COLOUR_SPREAD`` grey levels
    (of 255): 0 for grey images, grey stored as RGB and JPEG noise on it."""
    if image.ndim != 3 or image.shape[2] < 3:
        return 0.0
    channels = image[..., :3].astype(np.float32)
    if np.issubdtype(image.dtype, np.integer) and image.dtype.itemsize > 1:
        channels *= 255.0 / float(np.iinfo(image.dtype).max)
    elif np.issubdtype(image.dtype, np.floating):
        top = float(np.nanmax(channels)) if channels.size else 0.0
        channels *= 255.0 / top if top > 1.0 else 255.0
    spread = channels.max(axis=2) - channels.min(axis=2)
    return float((spread > COLOUR_SPREAD).mean())


def _content_box(gray: np.ndarray) -> np.ndarray:
    """The film inside its black borders (shutters, a zoomed-out or padded export); the whole film
    when none."""
    inside = gray > CONTENT_LEVEL
    rows = np.flatnonzero(inside.mean(axis=1) > CONTENT_SHARE)
    cols = np.flatnonzero(inside.mean(axis=0) > CONTENT_SHARE)
    if len(rows) < 2 or len(cols) < 2:
        return gray
    return gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def image_features(image: np.ndarray, gray: np.ndarray | None = None) -> dict[str, float]:
    """What the gate measures on a film's pixels (any size and depth, grey or BGR), after the
    ``window`` rule (``gray``: the film so, when already computed):

    - ``detail``: the standard deviation of what a small blur removes over that of the film, at
      ``FEATURE_SIZE`` px: near 0 for a smooth gradient, near 1 for noise or text;
    - ``flat``: the largest share of the content box held by one grey level (a page, a background);
    - ``dark_edge``: the share of background along the content box's least dark side: high when the
      body reaches no edge of the film (a chest film's body runs off at least one edge, the
      abdomen's);
    - ``aspect``: the long side over the short side; ``colour``: :func:`colour_share`.
    """
    gray = window(to_gray(image)) if gray is None else gray
    h, w = gray.shape[:2]
    small = cv2.resize(gray, (FEATURE_SIZE, FEATURE_SIZE), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    fine = small - cv2.GaussianBlur(small, (0, 0), DETAIL_SIGMA)
    content = _content_box(gray)
    counts = histogram(content)
    box = cv2.resize(content, (EDGE_BOX, EDGE_BOX), interpolation=cv2.INTER_AREA) <= CONTENT_LEVEL
    sides = (box[:EDGE_BAND], box[-EDGE_BAND:], box[:, :EDGE_BAND], box[:, -EDGE_BAND:])
    return {
        "detail": float(fine.std() / small.std()) if small.std() > 0 else 0.0,
        "flat": float(counts.max() / content.size),
        "dark_edge": float(min(side.mean() for side in sides)),
        "aspect": float(max(h, w) / max(1, min(h, w))),
        "colour": colour_share(image),
    }


def check_image(
    image: np.ndarray, limits: ImageLimits = ImageLimits(), gray: np.ndarray | None = None
) -> Status:
    """The gate on a film's pixels (any input: PNG, JPEG, DICOM): a colour photograph is refused, a
    film whose features lie outside ``limits`` is flagged (the reason names each feature and its
    limit). ``gray``: the film after the ``window`` rule, when already computed."""
    f = image_features(image, gray)
    if f["colour"] > limits.max_colour:
        return Status(
            "refused",
            f"a colour photograph ({f['colour']:.0%} of pixels in colour), not a radiograph",
        )
    checks = [
        ("detail", f["detail"] < limits.min_detail, "<", limits.min_detail),
        ("detail", f["detail"] > limits.max_detail, ">", limits.max_detail),
        ("flat", f["flat"] > limits.max_flat, ">", limits.max_flat),
        ("dark_edge", f["dark_edge"] > limits.max_dark_edge, ">", limits.max_dark_edge),
        ("aspect", f["aspect"] > limits.max_aspect, ">", limits.max_aspect),
    ]
    out = [f"{name} {f[name]:.3f} {sign} {limit}" for name, bad, sign, limit in checks if bad]
    if out:
        return Status("flagged", "unlike a chest radiograph: " + ", ".join(out))
    return OK


def _view_codes(film: DicomFilm) -> str:
    """The meanings of the film's ViewCodeSequence, lower-cased (some systems record the view only
    there)."""
    items = film.dataset.get("ViewCodeSequence") or []
    return " ".join(str(item.get("CodeMeaning", "")).lower() for item in items)


def check_film(film: DicomFilm) -> Status:
    """The gate on a DICOM film's attributes, before its pixels are decoded."""
    if film.modality not in RADIOGRAPH_MODALITIES:
        what = f"Modality {film.modality}" if film.modality else "no Modality"
        return Status("refused", f"{what}: not a projection radiograph (CR, DX or RG)")
    if not film.has_pixels:
        return Status("refused", "no pixel data")
    if film.frames > 1:
        return Status("refused", f"a multi-frame object ({film.frames} frames)")
    if film.photometric in COLOUR_PHOTOMETRICS:
        return Status("refused", f"a colour image ({film.photometric})")
    view, codes = film.view_position, _view_codes(film)
    if view in LATERAL_VIEWS or (not view and "lateral" in codes and "decubitus" not in codes):
        return Status(
            "refused",
            f"a lateral view (ViewPosition {view or codes!r}); the model reads frontal films",
        )
    if view in OBLIQUE_VIEWS or (not view and "oblique" in codes):
        return Status("flagged", f"an oblique view (ViewPosition {view or codes!r})")
    return OK


def gate(
    film: DicomFilm | None = None,
    image: np.ndarray | None = None,
    limits: ImageLimits = ImageLimits(),
    gray: np.ndarray | None = None,
) -> Status:
    """The gate on a film: its DICOM attributes (``film``, when it is one) first, then its pixels
    (``image``, as decoded: :meth:`DicomFilm.pixels` or the image file, before the window rule;
    ``gray``: after it, when already computed). A refusal wins over a flag; two flags are
    joined."""
    verdicts = [check_film(film)] if film is not None else []
    if image is not None and not (verdicts and verdicts[0].refused):
        verdicts.append(check_image(image, limits, gray))
    for status in ("refused", "flagged"):
        reasons = [v.reason for v in verdicts if v.status == status]
        if reasons:
            return Status(status, "; ".join(reasons))
    return OK
