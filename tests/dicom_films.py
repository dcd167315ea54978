"""Synthetic DICOM radiographs for the DICOM tests: a DX film with the attributes a hospital's
export carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def dx_dataset(stored: np.ndarray, **attributes: Any) -> pydicom.Dataset:
    """A single-frame 16-bit MONOCHROME2 DX film of ``stored`` pixels (12 bits used) with patient,
    study, series and equipment attributes; ``attributes`` set or override any (None deletes
    one)."""
    meta = FileMetaDataset()
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
    ds.Manufacturer = "lungseg tests"
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
    """Write :func:`dx_dataset` as a DICOM Part 10 file (preamble and "DICM")."""
    dx_dataset(stored, **attributes).save_as(path, enforce_file_format=True)
    return path


def chest_phantom(h: int = 240, w: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A 12-bit chest-like film (bright body, two dark lung ellipses) and its two-lung mask
    (bool)."""
    import cv2

    yy, xx = np.mgrid[:h, :w]
    film = (2600 + 300 * np.sin(yy / 17.0) * np.cos(xx / 23.0)).astype(np.float64)
    mask = np.zeros((h, w), np.uint8)
    for cx in (int(w * 0.3), int(w * 0.7)):
        cv2.ellipse(mask, (cx, int(h * 0.45)), (int(w * 0.13), int(h * 0.3)), 0, 0, 360, 1, -1)
    film[mask > 0] = 900 + 80 * np.sin(xx[mask > 0] / 5.0)
    return np.clip(film, 0, 4095).astype(np.uint16), mask > 0
