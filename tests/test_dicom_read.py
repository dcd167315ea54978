"""Reading DICOM films (lungseg.dicom.read): display pixels, the attributes the gate, the side split
and the SEG writer use, compressed films, and one line naming the file and the fix for each bad
one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

from lungseg.dicom.read import DicomFilm, read_dicom, read_film
from lungseg.errors import DataError
from lungseg.inference.inputs import read_dicom as inputs_read_dicom
from lungseg.inference.inputs import read_input
from tests.dicom_films import chest_phantom, dx_dataset, write_dx


def bundled(name: str) -> Path:
    """A test file that ships inside pydicom (never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not among pydicom's bundled test files")
    return Path(path)


def test_a_film_reads_its_attributes_and_display_pixels(tmp_path: Path) -> None:
    film, _ = chest_phantom()
    path = write_dx(
        tmp_path / "film.dcm",
        film,
        PixelSpacing=[0.15, 0.16],
        ImagerPixelSpacing=[0.2, 0.2],
        PatientOrientation=["R", "F"],
        ViewPosition="AP",
        RescaleSlope=2,
        RescaleIntercept=-10,
    )
    got = read_film(path)
    ds = got.dataset
    assert (got.study_uid, got.series_uid, got.sop_instance_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    assert (got.modality, got.view_position, got.patient_orientation) == ("DX", "AP", ("R", "F"))
    assert got.pixel_spacing == (0.15, 0.16) and got.spacing_source == "PixelSpacing"  # preferred
    assert (got.rows, got.columns, got.frames, got.samples_per_pixel) == (240, 200, 1, 1)
    assert got.photometric == "MONOCHROME2" and got.transfer_syntax == "1.2.840.10008.1.2.1"
    np.testing.assert_array_equal(got.pixels(), film.astype(np.float32) * 2 - 10)  # modality LUT
    # ImagerPixelSpacing when it is the only one; none (or a zero) -> no spacing
    only_imager = read_film(write_dx(tmp_path / "b.dcm", film, ImagerPixelSpacing=[0.2, 0.18]))
    assert only_imager.pixel_spacing == (0.2, 0.18)
    assert only_imager.spacing_source == "ImagerPixelSpacing"
    broken = read_film(write_dx(tmp_path / "c.dcm", film, PixelSpacing=[0, 0.1]))
    assert broken.pixel_spacing is None and broken.spacing_source is None


def test_monochrome1_is_inverted_and_inputs_read_dicom_is_the_same_reader(tmp_path: Path) -> None:
    film, _ = chest_phantom()
    m2 = write_dx(tmp_path / "m2.dcm", film)
    m1 = write_dx(tmp_path / "m1.dcm", 4095 - film, PhotometricInterpretation="MONOCHROME1")
    assert inputs_read_dicom is read_dicom
    a, b = read_dicom(m2), read_dicom(m1)
    np.testing.assert_allclose(a - a.min(), b - b.min())  # bone is white either way
    np.testing.assert_array_equal(read_input(m1), read_input(m2))


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"]
)
def test_a_losslessly_compressed_film_reads_back_exactly(tmp_path: Path, syntax: str) -> None:
    film, _ = chest_phantom()
    ds = dx_dataset(film)
    ds.compress(syntax)  # JPEG 2000 / JPEG-LS Lossless, RLE: the dicom extra's plugins encode them
    ds.save_as(tmp_path / "film.dcm", enforce_file_format=True)
    got = read_film(tmp_path / "film.dcm")
    assert got.transfer_syntax == syntax
    np.testing.assert_array_equal(got.pixels(), film.astype(np.float32))


def test_bundled_12_bit_jpeg_extended_and_jpeg_2000_films_decode() -> None:
    extended, j2k = read_film(bundled("JPGExtended.dcm")), read_film(bundled("JPEG2000.dcm"))
    assert (extended.transfer_syntax, j2k.transfer_syntax) == (
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.91",
    )
    assert extended.dataset.BitsStored == 12  # Pillow cannot decode it: pylibjpeg-libjpeg does
    a, b = extended.pixels(), j2k.pixels()
    assert a.shape == b.shape == (1024, 256) and a.dtype == b.dtype == np.float32
    # pydicom ships one NM film in both codecs, each lossy: the same picture, not the same values
    assert a.std() > 10 and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("plugins", [(), ("pillow",)])
def test_a_missing_decoder_names_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch, plugins: tuple[str, ...]
) -> None:
    from pydicom.pixels import get_decoder

    decoder = get_decoder("1.2.840.10008.1.2.4.51")
    available = {k: v for k, v in decoder._available.items() if k in plugins}
    if len(available) != len(plugins):
        pytest.skip(f"needs the {plugins} plugin installed")
    monkeypatch.setattr(decoder, "_available", available)  # none, or Pillow alone (8-bit only)
    path = bundled("JPGExtended.dcm")
    with pytest.raises(DataError) as err:
        read_dicom(path)
    message = str(err.value)
    assert message.startswith(f"{path}: pixel data compressed as JPEG Extended")
    assert "\n" not in message
    assert 'pip install "lungseg[dicom]"' in message and "pylibjpeg-libjpeg" in message


def test_bad_films_raise_one_line_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    film, _ = chest_phantom()
    good = write_dx(tmp_path / "good.dcm", film)
    data = good.read_bytes()
    cases: dict[str, tuple[Path, str]] = {}
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 5000])
    cases["cut"] = (tmp_path / "cut.dcm", "truncated or corrupt pixel data")
    no_pixels = dx_dataset(film)
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    cases["nopix"] = (tmp_path / "nopix.dcm", "no pixel data, though it describes a 200x240 image")
    two = dx_dataset(np.concatenate([film, film]), NumberOfFrames=2, Rows=240)
    two.save_as(tmp_path / "two.dcm", enforce_file_format=True)
    cases["two"] = (tmp_path / "two.dcm", "multi-frame DICOM (2 frames); export the single")
    mpeg = dx_dataset(film)
    mpeg.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no pydicom decoder at all
    mpeg.PixelData = encapsulate([b"\x00" * 8])
    mpeg["PixelData"].VR = "OB"
    mpeg.save_as(tmp_path / "mpeg.dcm", enforce_file_format=True)
    cases["mpeg"] = (tmp_path / "mpeg.dcm", "which no pydicom decoder reads; convert the file")
    (tmp_path / "text.dcm").write_text("not a DICOM file at all, but long enough " * 10)
    cases["text"] = (tmp_path / "text.dcm", "not a readable DICOM file (no DICOM file header")
    cases["bad jpeg"] = (
        bundled("JPEG-lossy.dcm"),  # pydicom's deliberately broken codestream
        "truncated or corrupt pixel data (Unable to decode",
    )
    cases["rtplan"] = (bundled("rtplan.dcm"), "no pixel data (a RTPLAN object, not an image)")
    for key, (path, expected) in cases.items():
        with pytest.raises(DataError) as err:
            read_dicom(path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and expected in message, (key, message)
        assert "\n" not in message, key


def test_film_header_is_read_without_decoding(tmp_path: Path) -> None:
    film, _ = chest_phantom()
    two = dx_dataset(np.concatenate([film, film]), NumberOfFrames=2, Rows=240)
    two.save_as(tmp_path / "two.dcm", enforce_file_format=True)
    got = read_film(tmp_path / "two.dcm")  # no error: the gate refuses it by its attributes
    assert isinstance(got, DicomFilm) and got.frames == 2 and got.has_pixels


def test_display_pixels_are_pydicoms_modality_and_voi_luts_in_float32(tmp_path: Path) -> None:
    """lungseg rescales in float32 (5x faster than pydicom's float64 at 2048 px); the values are
    pydicom's, for a fractional rescale, a VOI window on top, and a modality LUT sequence."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    from pydicom.sequence import Sequence

    film, _ = chest_phantom()

    def reference(film: DicomFilm) -> np.ndarray:
        ds = film.dataset
        return apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)

    rescaled = read_film(
        write_dx(tmp_path / "a.dcm", film, RescaleSlope=0.37, RescaleIntercept=-12.5)
    )
    got = rescaled.pixels()
    assert got.dtype == np.float32 and not np.array_equal(got, film.astype(np.float32))
    np.testing.assert_allclose(got, reference(rescaled), rtol=1e-6, atol=1e-4)
    windowed = read_film(
        write_dx(
            tmp_path / "b.dcm",
            film,
            RescaleSlope=2,
            RescaleIntercept=-10,
            WindowCenter=3000,
            WindowWidth=2000,
        )
    )
    got = windowed.pixels()
    assert 0 < (got == got.max()).mean() < 0.9  # the window clips part of the film
    np.testing.assert_allclose(got, reference(windowed), rtol=1e-6, atol=1e-3)
    # a modality LUT sequence (here: levels reversed) goes through pydicom's own LUT
    ds = dx_dataset(film)
    item = type(ds)()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = list(range(4095, -1, -1))
    item["LUTData"].VR = "US"
    ds.ModalityLUTSequence = Sequence([item])
    ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
    lut = read_film(tmp_path / "c.dcm")
    np.testing.assert_array_equal(lut.pixels(), 4095 - film.astype(np.float32))
