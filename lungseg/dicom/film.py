"""Writing a radiograph as a DICOM DX film: the attributes a hospital's export carries (patient,
study, series, equipment, view, orientation), 16-bit MONOCHROME2 pixels. Used to build synthetic
cohorts (``lungseg.bench mode=cohort``) and test films."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lungseg.atomic import atomic_open
from lungseg.errors import require_extra

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def dx_dataset(stored: np.ndarray, **attributes: Any) -> Any:
    """A single-frame 16-bit MONOCHROME2 DX film (a ``pydicom.Dataset``) of ``stored`` pixels (12
    bits used) with patient, study, series and equipment attributes; ``attributes`` set or override
    any (None deletes one)."""
    pydicom = require_extra("pydicom", "dicom", "DICOM writing")
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_FOR_PRESENTATION, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Test^Film", "LS0001"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.Manufacturer = "lungseg"
    ds.ViewPosition, ds.PatientOrientation, ds.ImageLaterality = "PA", ["L", "F"], "U"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
    ds.PixelData = np.asarray(stored, np.uint16).tobytes()
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write_dx(path: Path, stored: np.ndarray, **attributes: Any) -> Path:
    """Write :func:`dx_dataset` as a DICOM Part 10 file (preamble and "DICM"), whole."""
    ds = dx_dataset(stored, **attributes)
    with atomic_open(path, "wb", durable=False) as f:
        ds.save_as(f, enforce_file_format=True)
    return path
