"""Reading radiographs and masks from disk, and the one preprocessing used by training and inference."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lungseg.errors import DataError

MASK_THRESHOLD = 128
# A mask is "not binary" when more than this fraction of its pixels is mid-grey (64..191):
# JPEG artefacts on real masks stay near 0 and 255 and well under this.
MAX_GREY_FRACTION = 0.01
# A mask is "colour" when more than this fraction of its pixels have channels that differ by more than
# COLOUR_SPREAD: a grey mask saved as RGB (JPEG noise included) stays far below; a colour-coded one does not.
MAX_COLOUR_FRACTION = 0.01
COLOUR_SPREAD = 48


def read_image_file(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an image file, raising a DataError that names the file when it cannot be read."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror}); check it exists and is readable") from None
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None or image.size == 0:
        raise DataError(f"{path}: not a readable image (corrupt or truncated?); replace or remove it")
    return image


def to_gray8(image: np.ndarray) -> np.ndarray:
    """Convert any decoded image to 8-bit grayscale, the one way used everywhere.

    Colour (BGR/BGRA) becomes luminance (ITU-R 601, alpha dropped); 16-bit and float images are
    stretched from their own min..max to 0..255 (X-ray PNGs rarely use the full 16-bit range).
    """
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[:, :, :3]
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.shape[2] == 3 else image[:, :, 0]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    image = image.astype(np.float32)
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros(image.shape, np.uint8)
    return np.round((image - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_gray(path: Path) -> np.ndarray:
    """Read an image file as 8-bit grayscale (see ``to_gray8``)."""
    return to_gray8(read_image_file(path))


def binarize(mask: np.ndarray) -> np.ndarray:
    """Threshold a mask at 128 (JPEG masks are not exactly 0/255) to uint8 {0, 1}."""
    return (to_gray8(mask) >= MASK_THRESHOLD).astype(np.uint8)


def grey_fraction(mask: np.ndarray) -> float:
    """Fraction of mid-grey pixels, the measure of how far a mask is from binary."""
    mask = to_gray8(mask)
    return float(((mask >= 64) & (mask < 192)).mean())


def colours(image: np.ndarray, most: int = 4) -> list[str]:
    """The most frequent colours of a BGR(A) image as #rrggbb, quantised to steps of 32 (JPEG noise folded)."""
    rgb = (image[..., 2::-1].reshape(-1, 3).astype(np.int32) + 16) // 32 * 32
    values, counts = np.unique(np.clip(rgb, 0, 255), axis=0, return_counts=True)
    order = np.argsort(-counts)[:most]
    return [f"#{r:02x}{g:02x}{b:02x} ({counts[i] / len(rgb):.0%})" for i, (r, g, b) in zip(order, values[order],
                                                                                        strict=True)]


def read_mask(path: Path) -> np.ndarray:
    """Read a mask file as uint8 {0, 1}, refusing one that is colour-coded or not (close to) binary."""
    mask = read_image_file(path)
    if mask.ndim == 3 and mask.shape[2] >= 3:
        bgr = mask[..., :3].astype(np.int16)
        if ((bgr.max(-1) - bgr.min(-1)) > COLOUR_SPREAD).mean() > MAX_COLOUR_FRACTION:
            raise DataError(f"{path}: colour mask (colours found: {', '.join(colours(mask))}); masks must be "
                            "black background and white lung: convert the lung colour to white, the rest to black")
    grey = grey_fraction(mask)
    if grey > MAX_GREY_FRACTION:
        raise DataError(
            f"{path}: mask is not binary ({grey:.1%} of pixels are mid-grey); "
            "masks must be black background and white lung (threshold at 128)"
        )
    return binarize(mask)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a grayscale image to size x size (area interpolation when shrinking, linear when growing)."""
    if image.shape[:2] == (size, size):
        return image
    shrinking = image.shape[0] >= size and image.shape[1] >= size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a mask to size x size with nearest-neighbour, so it stays binary."""
    if mask.shape[:2] == (size, size):
        return mask
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 grayscale -> float32 in [0, 1], the model's input scale."""
    return image.astype(np.float32) * (1.0 / 255.0)


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
    """Any decoded image -> float32 (size, size) in [0, 1]: the model input, for training and inference."""
    return to_unit_float(resize_image(to_gray8(image), size))


def load_pair(image_path: Path, mask_path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read, validate and resize one image/mask pair to uint8 arrays (image 0..255, mask 0/1)."""
    image = read_gray(image_path)
    mask = read_mask(mask_path)
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{image_path}: image is {image.shape[1]}x{image.shape[0]} but its mask {mask_path.name} is "
            f"{mask.shape[1]}x{mask.shape[0]}; they must be the same size"
        )
    return resize_image(image, size), resize_mask(mask, size)


def limit_opencv_threads(num_workers: int) -> None:
    """With DataLoader workers, run OpenCV single-threaded so N workers don't each start a thread per core.

    Call it in the parent before the workers fork: ``cv2.setNumThreads`` inside a forked worker can
    deadlock on the parent's thread pool.
    """
    if num_workers > 0:
        cv2.setNumThreads(1)
