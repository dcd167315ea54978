"""A film's lungs as a DICOM Segmentation (SEG) that a viewer or PACS shows over the film: one
binary segment per lung (SNOMED CT "Lung" with the laterality modifier "Left" or "Right"),
referencing the source film's study, series and SOP instance, with the algorithm (lungseg, its
version, the model) and the mask's quality score and review flag recorded. Written with highdicom,
which supports projection radiographs (DX, CR) that have no frame of reference.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lungseg.atomic import atomic_open
from lungseg.errors import DataError, require_extra
from lungseg.version import __version__

if TYPE_CHECKING:
    from lungseg.artifacts.description import ModelDescription
    from lungseg.dicom.read import DicomFilm

SEG_FEATURE = "DICOM SEG output"
SEGMENTS = ("Left lung", "Right lung")  # segment numbers 1 and 2
CONTENT_LABEL = "LUNGS"  # ContentLabel: a code string of at most 16 characters
SERIES_DESCRIPTION = "lungseg lung segmentation"
SERIES_NUMBER = 9901  # a number unlikely to clash with the modality's own series
REFERENCED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def _highdicom() -> Any:
    """highdicom, its per-attribute INFO lines ("copy attributes of module ...", a dozen per SEG)
    kept out of the run's log."""
    hd = require_extra("highdicom", "dicom", SEG_FEATURE)
    logging.getLogger("highdicom").setLevel(
        max(logging.WARNING, logging.getLogger("highdicom").level)
    )
    return hd


def _segment(number: int, label: str, laterality: Any, algorithm: Any) -> Any:
    """One lung's segment description: Anatomical Structure / Lung, with the laterality as a
    modifier."""
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Lung,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
        hd.sr.CodedConcept(laterality.value, laterality.scheme_designator, laterality.meaning)
    ]
    return description


def quality_text(quality_score: float, needs_review: bool) -> str:
    """The SEG's ContentDescription (at most 64 characters): the quality score and the review
    flag."""
    score = "n/a" if quality_score is None or math.isnan(quality_score) else f"{quality_score:.3f}"
    return f"lungs; quality_score {score}; needs_review {'yes' if needs_review else 'no'}"


def write_seg(
    source: DicomFilm | Any,
    left: np.ndarray,
    right: np.ndarray,
    description: ModelDescription | None,
    quality_score: float,
    needs_review: bool,
    path: str | Path,
    *,
    model_name: str | None = None,
    weights_sha256: str | None = None,
    side_source: str | None = None,
    series_uid: str | None = None,
    series_number: int = SERIES_NUMBER,
    instance_number: int = 1,
) -> Path:
    """Write the patient's ``left`` and ``right`` lung masks (bool, the film's rows x columns) of
    ``source`` (a :class:`DicomFilm` or its pydicom Dataset) as a binary DICOM SEG at ``path``,
    atomically.

    The algorithm is recorded as name "lungseg", family Artificial Intelligence, version lungseg's,
    with the model (``model_name``; its input size, threshold, date and commit from ``description``;
    ``weights_sha256``), the quality score, the review flag and how the sides were decided as its
    parameters; the score and flag also go into the ContentDescription. ``series_uid``: the SEG
    series to add to (None: a new one)."""
    hd = _highdicom()
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    dataset = getattr(source, "dataset", source)
    name = getattr(source, "path", None) or "the source DICOM"
    missing = [k for k in REFERENCED if not str(dataset.get(k, "") or "")]
    if missing:
        raise DataError(
            f"{name}: no {', '.join(missing)}, so a SEG cannot reference it; export "
            "the film with its UIDs"
        )
    shape = (int(dataset.Rows), int(dataset.Columns))
    masks = [m if m.dtype == np.bool_ else m > 0 for m in map(np.asarray, (left, right))]
    if any(m.shape != shape for m in masks):
        raise DataError(
            f"{name}: masks of {masks[0].shape} px for a film of {shape} px; a SEG "
            "needs the masks at the film's own size"
        )
    size = description.image_size if description is not None else None
    model = model_name or (f"U-Net {size} px" if size else "lungseg model")
    score = "n/a" if quality_score is None or math.isnan(quality_score) else f"{quality_score:.6f}"
    parameters = {
        "model": model,
        "quality_score": score,
        "needs_review": str(bool(needs_review)).lower(),
    }
    if description is not None:  # the model's version: when and from which commit it was trained
        parameters.update(
            image_size=str(description.image_size), threshold=str(description.threshold)
        )
        version = {"model_created": description.created, "model_git_commit": description.git_commit}
        parameters.update({k: str(v) for k, v in version.items() if v})
    if weights_sha256:
        parameters["weights_sha256"] = weights_sha256
    if side_source:
        parameters["side_source"] = side_source
    algorithm = hd.AlgorithmIdentificationSequence(
        name="lungseg",
        family=codes.DCM.ArtificialIntelligence,
        version=__version__,
        source=model[:64],
        parameters={k: v.replace(",", ";") for k, v in parameters.items()},
    )
    segments = [
        _segment(1, SEGMENTS[0], codes.SCT.Left, algorithm),
        _segment(2, SEGMENTS[1], codes.SCT.Right, algorithm),
    ]
    if np.any(masks[0] & masks[1]):  # overlapping sides: one frame stack per segment
        pixels = np.stack(masks, axis=-1)[None].astype(np.uint8)
    else:  # the usual split: a label map (1 left, 2 right), which highdicom checks 5x faster
        pixels = (masks[0].view(np.uint8) + 2 * masks[1].view(np.uint8))[None]
    seg = hd.seg.Segmentation(
        source_images=[dataset],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer="lungseg",
        manufacturer_model_name=f"lungseg {model}"[:64],
        software_versions=__version__,
        device_serial_number=(weights_sha256 or "unknown")[:16],
        content_label=CONTENT_LABEL,
        content_description=quality_text(quality_score, needs_review),
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=False,
    )
    if "FrameOfReferenceUID" not in seg:  # a DX or CR film: its pixels are the SEG's pixels
        # General Image: the SEG says how its pixels lie in the patient, as the film does (Type 2C;
        # empty when the film does not say).
        seg.PatientOrientation = dataset.get("PatientOrientation", "")
        # Pixel Measures may be present only with a frame of reference (PS3.3 Table A.51-2), and
        # highdicom cannot read back the one it writes for a film (no SliceThickness).
        for group in [*seg.SharedFunctionalGroupsSequence, *seg.PerFrameFunctionalGroupsSequence]:
            if "PixelMeasuresSequence" in group:
                del group.PixelMeasuresSequence
    path = Path(path)
    with atomic_open(path, "wb") as f:
        seg.save_as(f, enforce_file_format=True)
    return path


def read_seg(path: str | Path) -> dict[str, np.ndarray]:
    """The lung masks of a SEG written by :func:`write_seg`: {"Left lung": bool (H, W), "Right
    lung": ...}."""
    hd = _highdicom()
    seg = hd.seg.segread(path)
    numbers = {seg.get_segment_description(n).segment_label: n for n in seg.segment_numbers}
    source = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    stack = seg.get_pixels_by_source_instance(
        [source], segment_numbers=[numbers[s] for s in SEGMENTS]
    )
    return {label: stack[0, :, :, i] > 0 for i, label in enumerate(SEGMENTS)}
