"""Reading radiographs and masks from disk, and the one preprocessing used by training and
inference."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

from lungseg.errors import DataError

MASK_THRESHOLD = 128
# The smallest side of an image taken as a radiograph: anything smaller is an icon, a thumbnail or a
# broken export, not a film to segment or train on (the network's own input is far larger).
MIN_SIDE = 16
# A mask is "not binary" when more than this fraction of its pixels is mid-grey (64..191):
# JPEG artefacts on real masks stay near 0 and 255 and well under this.
MAX_GREY_FRACTION = 0.01
# A mask is "colour" when more than this fraction of its pixels have channels that differ by more
# than
# COLOUR_SPREAD: a grey mask saved as RGB (JPEG noise included) stays far below; a colour-coded one
# does not.
MAX_COLOUR_FRACTION = 0.01
COLOUR_SPREAD = 48


def read_image_file(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an image file, raising a DataError that names the file when it cannot be read or holds
    more than one frame (an animated GIF, PNG or WebP, a multi-page TIFF: decoders would silently
    take the first)."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(
            f"{path}: cannot read file ({err.strerror}); check it exists and is readable"
        ) from None
    frames = frame_count(data.tobytes()) if data.size else 1
    if frames > 1:
        raise DataError(
            f"{path}: an animated or multi-page image ({frames} frames); save the one radiograph "
            "as a single-frame PNG"
        )
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None or image.size == 0:
        raise DataError(
            f"{path}: not a readable image (corrupt or truncated?); replace or remove it"
        )
    return image


def frame_count(data: bytes) -> int:
    """How many frames an encoded image holds: read from the header for the formats that can hold
    several (GIF, TIFF, PNG with an animation chunk, WebP with one); 1 for everything else."""
    webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP" and b"ANIM" in data[12:256]
    png = (
        data[:8] == b"\x89PNG\r\n\x1a\n"
        and b"acTL" in data[: data.find(b"IDAT") if b"IDAT" in data else 4096]
    )
    if not (data[:4] in (b"GIF8", b"II*\x00", b"MM\x00*") or png or webp):
        return 1
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(getattr(im, "n_frames", 1))
    except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError):
        return 1  # let the decoder report what is wrong with it


def require_radiograph(image: np.ndarray, where: str) -> np.ndarray:
    """Refuse what cannot be a radiograph: not 2-D (H x W, or H x W x 1/3/4 channels) or under
    ``MIN_SIDE`` px a side; the same rule for training data and inference inputs."""
    channels_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
    if not channels_ok or min(image.shape[:2]) < MIN_SIDE:
        raise DataError(
            f"{where}: image of shape {image.shape} is not a radiograph: expected H x W (or H x W "
            "x 1/3/4 "
            f"channels) of at least {MIN_SIDE} px a side; replace or remove it"
        )
    return image


# How grey levels of any bit depth become the model's 8-bit input (recorded in every model's
# description as preprocessing["intensity"]; a model is always fed by the rule it was trained with):
# window: the film's own 0.5th..99.5th percentile grey levels -> 0..255, clipped, for every depth.
#         The same film as an 8-bit PNG, a 16-bit PNG or a DICOM gives the same input; a linear
#         contrast or brightness change of the export does not move it. (lungseg >= 0.3)
# minmax: 8-bit as is; 16-bit and float stretched from their own min..max (lungseg 0.2, and masks).
INTENSITY_RULES = ("window", "minmax")
WINDOW_PERCENTILES = (0.5, 99.5)
# float images: percentiles from a regular subsample of at most this many pixels
_MAX_FLOAT_SAMPLES = 1 << 20


def to_gray(image: np.ndarray) -> np.ndarray:
    """Colour (BGR/BGRA) -> ITU-R 601 luminance (alpha dropped); grayscale as is. The bit depth is
    kept."""
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[:, :, :3]
        if image.shape[2] == 3:
            if image.dtype not in (np.uint8, np.uint16, np.float32):
                image = image.astype(np.float32)
            return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY)
        return np.ascontiguousarray(image[:, :, 0])
    return np.ascontiguousarray(image)


def histogram(gray: np.ndarray) -> np.ndarray:
    """int64 counts of each grey level of an 8- or 16-bit image, at least 256 long: OpenCV's
    histogram where its float32 counts are exact (under 2**24 pixels; 5x faster than np.bincount at
    2048 px), else numpy's."""
    top = max(256, int(gray.max()) + 1 if gray.size else 0)
    if gray.size < 1 << 24:
        counts = cv2.calcHist([np.ascontiguousarray(gray)], [0], None, [top], [0, top])
        return counts.ravel().astype(np.int64)
    return np.bincount(gray.ravel(), minlength=top)


def _percentiles(gray: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of a grayscale image's grey levels (exact for
    8/16-bit)."""
    if gray.dtype in (np.uint8, np.uint16):
        cdf = np.cumsum(histogram(gray))
        lo, hi = np.searchsorted(cdf, [cdf[-1] * low / 100, cdf[-1] * high / 100])
        return float(lo), float(hi)
    step = max(1, int(np.ceil(np.sqrt(gray.size / _MAX_FLOAT_SAMPLES))))
    lo, hi = np.percentile(gray[::step, ::step], [low, high])
    return float(lo), float(hi)


def window(gray: np.ndarray) -> np.ndarray:
    """The ``window`` rule: a grayscale image of any depth -> uint8, its 0.5th..99.5th percentile
    grey levels stretched to 0..255 and the tails clipped. Flat images fall back to min..max (all
    zero when constant)."""
    lo, hi = _percentiles(gray, *WINDOW_PERCENTILES)
    if hi <= lo:
        lo, hi = float(gray.min()), float(gray.max())
        if hi <= lo:
            return np.zeros(gray.shape, np.uint8)
    if gray.dtype == np.uint8:
        levels = np.arange(256, dtype=np.float32)
        table = np.clip(np.round((levels - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        return cv2.LUT(gray, table)
    # every other depth, in float32 and in place: round(clip((g - lo) * 255 / (hi - lo))), the
    # values a lookup table of the levels would give, 3x faster than numpy's chained temporaries
    out = np.subtract(gray, np.float32(lo), dtype=np.float32)
    np.multiply(out, np.float32(255.0 / (hi - lo)), out=out)
    np.round(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _minmax(gray: np.ndarray) -> np.ndarray:
    """The ``minmax`` rule: 8-bit as is; other depths stretched from their own min..max to
    0..255."""
    if gray.dtype == np.uint8:
        return gray
    gray = gray.astype(np.float32)
    lo, hi = float(gray.min()), float(gray.max())
    if hi <= lo:
        return np.zeros(gray.shape, np.uint8)
    return np.round((gray - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def to_gray8(image: np.ndarray, intensity: str = "window") -> np.ndarray:
    """Any decoded image -> 8-bit grayscale by an intensity rule (``INTENSITY_RULES``), the one way
    used everywhere: radiographs by the model's rule (``window`` for every model lungseg trains
    now), masks by ``minmax``."""
    gray = to_gray(image)
    if intensity == "window":
        return window(gray)
    if intensity == "minmax":
        return _minmax(gray)
    raise ValueError(f"intensity rule {intensity!r}: expected one of {', '.join(INTENSITY_RULES)}")


def read_gray(path: Path, intensity: str = "window") -> np.ndarray:
    """Read a radiograph file as 8-bit grayscale by an intensity rule (``window``: the one training
    uses)."""
    return to_gray8(require_radiograph(read_image_file(path), str(path)), intensity)


def _levels(gray: np.ndarray) -> np.ndarray:
    """The grey levels an 8-bit image uses."""
    return np.flatnonzero(histogram(gray))


def binarize(mask: np.ndarray) -> np.ndarray:
    """A mask to uint8 {0, 1}: lung where it is at least 128 (JPEG masks are not exactly 0/255), or,
    in a mask of exactly two low values (0/1, as many tools save them), where it takes the higher
    one."""
    gray = to_gray8(mask, "minmax")
    levels = _levels(gray)
    if len(levels) == 2 and levels[1] < MASK_THRESHOLD:
        return (gray == levels[1]).astype(np.uint8)
    return (gray >= MASK_THRESHOLD).astype(np.uint8)


def grey_fraction(mask: np.ndarray) -> float:
    """Fraction of mid-grey pixels, the measure of how far a mask is from binary."""
    mask = to_gray8(mask, "minmax")
    return float(((mask >= 64) & (mask < 192)).mean())


def colours(image: np.ndarray, most: int = 4) -> list[str]:
    """The most frequent colours of a BGR(A) image as #rrggbb, quantised to steps of 32 (JPEG noise
    folded)."""
    rgb = (image[..., 2::-1].reshape(-1, 3).astype(np.int32) + 16) // 32 * 32
    values, counts = np.unique(np.clip(rgb, 0, 255), axis=0, return_counts=True)
    order = np.argsort(-counts)[:most]
    return [
        f"#{r:02x}{g:02x}{b:02x} ({counts[i] / len(rgb):.0%})"
        for i, (r, g, b) in zip(order, values[order], strict=True)
    ]


def read_mask(path: Path) -> np.ndarray:
    """Read a mask file as uint8 {0, 1}, refusing one that is colour-coded or not (close to)
    binary."""
    mask = read_image_file(path)
    if mask.ndim == 3 and mask.shape[2] >= 3:
        bgr = mask[..., :3].astype(np.int16)
        if ((bgr.max(-1) - bgr.min(-1)) > COLOUR_SPREAD).mean() > MAX_COLOUR_FRACTION:
            raise DataError(
                f"{path}: colour mask (colours found: {', '.join(colours(mask))}); masks must be "
                "black background and white lung: convert the lung colour to white, the rest to "
                "black"
            )
    levels = _levels(to_gray8(mask, "minmax"))
    if len(levels) == 2:  # two-valued (0/255, 0/1, ...): binary whatever its levels
        return binarize(mask)
    grey = grey_fraction(mask)
    if grey > MAX_GREY_FRACTION:
        raise DataError(
            f"{path}: mask is not binary ({grey:.1%} of pixels are mid-grey); "
            "masks must be black background and white lung (threshold at 128)"
        )
    if len(levels) > 2 and levels[-1] < MASK_THRESHOLD:  # many low levels: a 0/1 mask through JPEG
        raise DataError(
            f"{path}: mask values only reach {levels[-1]} over {len(levels)} grey levels (a 0/1 "
            "mask saved "
            "as JPEG?); save masks losslessly (PNG) with lung 255 or 1 and background 0"
        )
    return binarize(mask)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a grayscale image to size x size (area interpolation when shrinking, linear when
    growing)."""
    if image.shape[:2] == (size, size):
        return image
    shrinking = image.shape[0] >= size and image.shape[1] >= size
    return cv2.resize(
        image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a mask to size x size with nearest-neighbour, so it stays binary."""
    if mask.shape[:2] == (size, size):
        return mask
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 grayscale -> float32 in [0, 1], the model's input scale."""
    return image.astype(np.float32) * (1.0 / 255.0)


def preprocess(gray: np.ndarray, size: int) -> np.ndarray:
    """An 8-bit grayscale radiograph (``to_gray8``) -> float32 (size, size) in [0, 1]: the model
    input, for training and inference."""
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(
            f"preprocess takes 8-bit grayscale (to_gray8); got {gray.dtype} {gray.shape}"
        )
    return to_unit_float(resize_image(gray, size))


def load_pair(
    image_path: Path, mask_path: Path, size: int, intensity: str = "window"
) -> tuple[np.ndarray, np.ndarray]:
    """Read, validate and resize one image/mask pair to uint8 arrays (image 0..255 by the intensity
    rule, mask 0/1)."""
    image = read_gray(image_path, intensity)
    mask = read_mask(mask_path)
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{image_path}: image is {image.shape[1]}x{image.shape[0]} but its mask "
            f"{mask_path.name} is "
            f"{mask.shape[1]}x{mask.shape[0]}; they must be the same size"
        )
    return resize_image(image, size), resize_mask(mask, size)


def limit_opencv_threads(num_workers: int) -> None:
    """With DataLoader workers, run OpenCV single-threaded so N workers don't each start a thread
    per core.

    Call it in the parent before the workers fork: ``cv2.setNumThreads`` inside a forked worker can
    deadlock on the parent's thread pool.
    """
    if num_workers > 0:
        cv2.setNumThreads(1)
