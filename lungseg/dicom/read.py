"""Reading a DICOM radiograph: its display pixels, and what the gate, the side split and the SEG
writer need to know about it (UIDs, modality, view, orientation, pixel spacing, photometry, frames,
transfer syntax)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.errors import DataError, require_extra

DICOM_FEATURE = "DICOM input"
# Where a projection radiograph records its pixel size, the preferred first: PixelSpacing (at the
# patient, when the modality calibrates it) over ImagerPixelSpacing (at the detector: magnified).
SPACING_TAGS = ("PixelSpacing", "ImagerPixelSpacing")
INSTALL = 'pip install "lungseg[dicom]"'
# For each compressed transfer syntax: the pydicom 3 decoder plugin that reads all its variants, and
# the pip packages that bring it (Pillow reads 8-bit JPEG, not the 12-bit JPEG Extended of films).
_LIBJPEG = ("pylibjpeg", "pylibjpeg pylibjpeg-libjpeg")
_OPENJPEG = ("pylibjpeg", "pylibjpeg pylibjpeg-openjpeg")
DECODER_PLUGINS: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG,  # JPEG Baseline (8-bit)
    "1.2.840.10008.1.2.4.51": _LIBJPEG,  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": _LIBJPEG,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _LIBJPEG,  # JPEG Lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": _LIBJPEG,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _LIBJPEG,  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": _OPENJPEG,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _OPENJPEG,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": _OPENJPEG,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _OPENJPEG,  # HTJ2K
}
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# What pydicom raises on a file it cannot parse or decode (its exceptions are not one family).
_READ_ERRORS = (
    AttributeError,
    ValueError,
    KeyError,
    TypeError,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    IndexError,
)


def _text(ds: Any, keyword: str) -> str:
    """A single-valued text attribute, stripped and upper-cased ("" when absent or empty)."""
    value = ds.get(keyword, "")
    return str(value).strip().upper() if value is not None else ""


def _spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None]:
    """(row spacing, column spacing) in mm and the attribute it came from; (None, None) when no
    attribute holds two positive numbers."""
    for keyword in SPACING_TAGS:
        value = ds.get(keyword)
        try:
            pair = (float(value[0]), float(value[1])) if value and len(value) == 2 else None
        except (TypeError, ValueError):
            pair = None
        if pair and all(math.isfinite(v) and v > 0 for v in pair):
            return pair, keyword
    return None, None


def _reason(err: BaseException) -> str:
    """An exception's first line (with the next when it ends in a colon, as pydicom's do)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = lines or [type(err).__name__]
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]


@dataclass(frozen=True)
class DicomFilm:
    """One DICOM file as read, its pixels not yet decoded: the dataset and the attributes lungseg
    decides by."""

    path: Path
    dataset: Any = field(repr=False)  # the pydicom Dataset (the SEG writer references it)
    sop_class_uid: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    modality: str  # "DX", "CR", ... ("" when absent)
    view_position: str  # "PA", "AP", "LL", ... ("" when absent)
    patient_orientation: tuple[str, ...]  # (along a row, down a column), e.g. ("L", "F"); or ()
    image_laterality: str
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) in mm
    spacing_source: str | None  # "PixelSpacing" | "ImagerPixelSpacing" | None
    photometric: str  # "MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", ...
    frames: int
    samples_per_pixel: int
    rows: int
    columns: int
    transfer_syntax: str  # its UID ("" when the file meta does not say)
    has_pixels: bool

    @property
    def transfer_syntax_name(self) -> str:
        """The transfer syntax by name ("JPEG Extended (Process 2 and 4)"), else its UID."""
        from pydicom.uid import UID

        return UID(self.transfer_syntax).name if self.transfer_syntax else "no transfer syntax"

    @property
    def no_pixels_reason(self) -> str:
        """Why a film has no pixel data, and what to do (a file cut short keeps its image size)."""
        if self.rows and self.columns:
            return (
                f"no pixel data, though it describes a {self.columns}x{self.rows} image: the "
                "file is truncated; export it again"
            )
        kind = self.modality or self.sop_class_uid or "DICOM"
        return f"no pixel data (a {kind} object, not an image); remove it from the input"

    def pixels(self) -> np.ndarray:
        """The display values: rescale slope/intercept, VOI window/LUT, MONOCHROME1 inverted
        (float32, H x W); colour pixels as OpenCV's BGR uint8 (H x W x 3). A DataError names the
        file and the fix when the film has no pixels, several frames, pixels no installed decoder
        reads, or truncated pixel data."""
        if not self.has_pixels:
            raise DataError(f"{self.path}: {self.no_pixels_reason}")
        if self.frames > 1:
            raise DataError(
                f"{self.path}: multi-frame DICOM ({self.frames} frames); export the single "
                "radiograph frame"
            )
        self._check_decoder()
        from pydicom.pixels import apply_voi_lut

        try:
            pixels = self.dataset.pixel_array
        except _READ_ERRORS as err:
            raise self._decode_error(err) from None
        if self.samples_per_pixel == 3:  # pydicom gives RGB; to_gray8 expects OpenCV's BGR
            return np.ascontiguousarray(pixels[..., ::-1])
        image = apply_voi_lut(self._modality(pixels), self.dataset)
        image = image.astype(np.float32, copy=False)
        if self.photometric == "MONOCHROME1":  # low values are white; the model saw white bone
            image = image.max() - image
        return image

    def _modality(self, pixels: np.ndarray) -> np.ndarray:
        """The modality LUT as pydicom applies it, a rescale (slope and intercept, both present)
        in float32: 5x faster at 2048 px than pydicom's float64, and exact for a film's integer
        levels; a LUT sequence by pydicom."""
        ds = self.dataset
        if ds.get("ModalityLUTSequence"):
            from pydicom.pixels import apply_modality_lut

            return apply_modality_lut(pixels, ds)
        image = pixels.astype(np.float32)
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            image *= np.float32(ds.RescaleSlope)
            image += np.float32(ds.RescaleIntercept)
        return image

    def _check_decoder(self) -> None:
        """Refuse, before decoding, pixels that no installed decoder reads, naming what to
        install."""
        from pydicom.pixels import get_decoder
        from pydicom.uid import UID

        if not self.transfer_syntax or not UID(self.transfer_syntax).is_compressed:
            return
        try:
            decoder = get_decoder(self.transfer_syntax)
        except NotImplementedError:
            raise DataError(
                f"{self.path}: pixel data in {self.transfer_syntax_name} ({self.transfer_syntax}), "
                "which no pydicom decoder reads; convert the file to an uncompressed, JPEG or JPEG "
                "2000 transfer syntax (e.g. gdcmconv --raw)"
            ) from None
        if not decoder.is_available:
            raise DataError(self._install_message())

    def _install_message(self) -> str:
        default = ("pylibjpeg", "pylibjpeg[all]")
        packages = DECODER_PLUGINS.get(self.transfer_syntax, default)[1]
        return (
            f"{self.path}: pixel data compressed as {self.transfer_syntax_name} "
            f"({self.transfer_syntax}) and no installed decoder reads it; {INSTALL} "
            f"(or pip install {packages})"
        )

    def _decode_error(self, err: BaseException) -> DataError:
        """A decoding failure as one line: the plugin to install when the full decoder is missing
        (Pillow cannot read 12-bit JPEG), else a truncated or corrupt file."""
        plugin = DECODER_PLUGINS.get(self.transfer_syntax, ("", ""))[0]
        if plugin:
            from pydicom.pixels import get_decoder

            if plugin not in get_decoder(self.transfer_syntax).available_plugins:
                return DataError(self._install_message())
        return DataError(
            f"{self.path}: truncated or corrupt pixel data ({_reason(err)}); export the film "
            "again or remove it"
        )


def read_film(path: str | Path) -> DicomFilm:
    """Read a DICOM file's attributes (its pixels stay encoded until :meth:`DicomFilm.pixels`); a
    file that is no readable DICOM raises a DataError naming it."""
    pydicom = require_extra("pydicom", "dicom", DICOM_FEATURE)
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, *_READ_ERRORS) as err:
        reason = (
            "no DICOM file header: the 'DICM' marker is missing"
            if isinstance(err, InvalidDicomError)
            else _reason(err)
        )
        raise DataError(
            f"{path}: not a readable DICOM file ({reason}); replace or remove it"
        ) from None
    # a preamble over garbage
    if not any(k in ds for k in ("SOPClassUID", "Modality", *PIXEL_KEYWORDS)):
        raise DataError(
            f"{path}: not a readable DICOM file (no data set after its header: corrupt or "
            "truncated); replace or remove it"
        )
    meta = getattr(ds, "file_meta", None)
    spacing, source = _spacing(ds)
    orientation = ds.get("PatientOrientation") or ()
    if isinstance(orientation, str):
        orientation = [orientation]
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    return DicomFilm(
        path=path,
        dataset=ds,
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        modality=_text(ds, "Modality"),
        view_position=_text(ds, "ViewPosition"),
        patient_orientation=tuple(str(v).strip().upper() for v in orientation),
        image_laterality=_text(ds, "ImageLaterality"),
        pixel_spacing=spacing,
        spacing_source=source,
        photometric=_text(ds, "PhotometricInterpretation"),
        frames=frames,
        samples_per_pixel=int(ds.get("SamplesPerPixel") or 1),
        rows=int(ds.get("Rows") or 0),
        columns=int(ds.get("Columns") or 0),
        transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "") or ""),
        has_pixels=any(k in ds for k in PIXEL_KEYWORDS),
    )


def read_dicom(path: str | Path) -> np.ndarray:
    """Decode a DICOM radiograph to display values (:meth:`DicomFilm.pixels`)."""
    return read_film(path).pixels()
