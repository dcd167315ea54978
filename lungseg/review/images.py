"""What the page shows of a film: the film (decoded as the model read it, the right way round) and
its mask as a clear layer above it; small thumbnails made on first request and cached on disk, the
full size only when a card is opened."""

from __future__ import annotations

import hashlib
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

from lungseg.atomic import write_bytes
from lungseg.errors import DataError
from lungseg.inference.outputs import Film
from lungseg.inference.overlay import GREEN, YELLOW

THUMB_PX = 256  # longest side of a card's pictures
CACHE_DIR = ".review-cache"  # hidden: lungseg.predict skips hidden folders among its inputs
FILL_ALPHA = 128  # the lungs' tint in the mask layer (the page's opacity slider scales it all)


def _bgr(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return rgb[2], rgb[1], rgb[0]


def film_source(film: Film) -> Path:
    """The file a film's picture comes from: the film, else (moved, deleted) predict's overlay."""
    if film.input.is_file():
        return film.input
    if film.overlay.is_file():
        return film.overlay
    raise DataError(
        f"film not found: {film.input} (moved or deleted?), and no overlay {film.overlay}"
    )


def mask_source(film: Film) -> Path:
    """The mask file of a film; DataError when it has none or it is gone."""
    if film.mask is None:
        raise DataError(f"film '{film.key}' has no mask (refused by the run)")
    if not film.mask.is_file():
        raise DataError(f"mask not found: {film.mask} (moved or deleted?)")
    return film.mask


def read_film(film: Film) -> np.ndarray:
    """The film as uint8 grayscale the right way round (an ``inverted`` film as the model read it),
    or predict's overlay (RGB) when the film is gone."""
    source = film_source(film)
    if source == film.overlay:
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"{source}: not a readable PNG; run lungseg.predict again")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    from lungseg.inference.inputs import read_input

    gray = read_input(source)
    return 255 - gray if film.inverted else gray


def read_mask(film: Film) -> np.ndarray:
    """The written mask as a bool array."""
    mask = cv2.imread(str(mask_source(film)), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DataError(f"{film.mask}: not a readable PNG; run lungseg.predict again")
    return mask > 127


def shrink(image: np.ndarray, longest: int) -> np.ndarray:
    """``image`` with its longest side at most ``longest`` px (area averaging)."""
    scale = longest / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def mask_layer(mask: np.ndarray) -> np.ndarray:
    """BGRA: the lungs tinted green and outlined in yellow as in predict's overlay, clear around."""
    mask = mask.astype(np.uint8)
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask > 0] = (*_bgr(GREEN), FILL_ALPHA)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    width = max(1, round(max(mask.shape) / 400))
    cv2.drawContours(layer, contours, -1, (*_bgr(YELLOW), 255), width)
    return layer


def encode(image: np.ndarray, kind: str) -> bytes:
    """``image`` (grayscale, RGB, or BGRA) as ``jpg`` or ``png`` (fast compression)."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 85] if kind == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, data = cv2.imencode(f".{kind}", image, params)
    if not ok:
        raise OSError(f"{kind} encoding failed")
    return data.tobytes()


def picture(film: Film, layer: str, longest: int | None) -> bytes:
    """One layer (``film`` or ``mask``) of a film, its longest side at most ``longest`` px (None:
    full size): a film thumbnail as JPEG, everything else as PNG."""
    if layer == "film":
        image = read_film(film)
        return encode(shrink(image, longest), "jpg") if longest else encode(image, "png")
    mask = read_mask(film)
    if longest:
        mask = shrink(mask.astype(np.uint8) * 255, longest) > 127
    return encode(mask_layer(mask), "png")


class Thumbnails:
    """Thumbnails made on first request and kept in ``<folder>/.review-cache``, named by what they
    show (a re-run's new mask gets a new one)."""

    def __init__(self, folder: Path, longest: int = THUMB_PX) -> None:
        self.longest = longest
        self.cache = folder / CACHE_DIR
        try:
            self.cache.mkdir(exist_ok=True)
        except OSError:  # the folder takes review.csv but not a folder: keep them for this run
            self.cache = Path(tempfile.mkdtemp(prefix="lungseg-review-"))
        self._locks = [threading.Lock() for _ in range(64)]  # atomic's temp name is per process

    def path(self, film: Film, layer: str) -> Path:
        """The cached thumbnail of a film's layer, made if missing; DataError when its source is
        gone."""
        source = film_source(film) if layer == "film" else mask_source(film)
        stat = source.stat()
        tag = "|".join(
            map(
                str,
                (
                    film.key,
                    layer,
                    source,
                    stat.st_mtime_ns,
                    stat.st_size,
                    film.inverted,
                    self.longest,
                ),
            )
        )
        digest = hashlib.sha1(tag.encode("utf-8")).hexdigest()
        path = self.cache / digest[:2] / f"{digest}.{'jpg' if layer == 'film' else 'png'}"
        if not path.is_file():
            with self._locks[int(digest[:4], 16) % len(self._locks)]:
                if not path.is_file():
                    write_bytes(path, picture(film, layer, self.longest))
        return path
