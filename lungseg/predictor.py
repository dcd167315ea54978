"""LungSegmenter: the one road from pixels to a lung mask (preprocess -> network -> upsample -> threshold ->
post-process), used by the Python API, ``lungseg.predict``, ``lungseg.evaluate`` and export's parity check.

    from lungseg import LungSegmenter
    seg = LungSegmenter.from_checkpoint("best.ckpt")
    mask = seg.predict("chest.png")          # bool (H, W) at the image's own size
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lungseg.artifact import ModelDescription, TrainedModel, load_checkpoint, load_pretrained
from lungseg.data.images import preprocess, to_gray8
from lungseg.errors import DataError, LungsegError
from lungseg.inputs import read_input
from lungseg.postprocess import QualityLimits, finish_mask
from lungseg.runtime import autocast, pick_device, resolve_precision

log = logging.getLogger(__name__)

ImageInput = np.ndarray | str | Path
FINISHERS = 2  # threads that upsample, threshold and clean masks while the model runs (OpenCV releases the GIL)


@dataclass
class Segmentation:
    """One input's result at its own size: the final mask, the probabilities and the mask's measures."""

    mask: np.ndarray                 # bool (H, W): thresholded and, when the segmenter post-processes, cleaned
    probability: np.ndarray          # float32 (H, W) in [0, 1]
    gray: np.ndarray                 # uint8 (H, W): the input as the model's preprocessing read it
    stats: dict[str, Any] = field(default_factory=dict)  # lung fraction, left/right areas, components, quality


def as_gray(image: ImageInput) -> np.ndarray:
    """A path (PNG/JPEG/TIFF/BMP/DICOM) or an array (H x W or H x W x C; uint8, uint16 or float) as uint8
    grayscale at its own size. Three-channel arrays are taken in OpenCV's BGR order, as files are decoded."""
    if isinstance(image, (str, Path)):
        return read_input(Path(image))
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or min(array.shape[:2]) < 2:
        raise DataError(f"image array of shape {array.shape}: expected H x W or H x W x 1/3/4 (a 2-D radiograph)")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype,
                                                                                               np.floating)):
        raise DataError(f"image array of dtype {array.dtype}: expected uint8, uint16 or float pixels")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError("image array holds NaN or infinite pixels; replace them before predicting")
    return to_gray8(array)


class _Inputs(Dataset):
    """Inputs as (grayscale, model-ready tensor); an unreadable one gives its DataError instead."""

    def __init__(self, images: Sequence[ImageInput], size: int) -> None:
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, torch.Tensor | None, DataError | None]:
        try:
            gray = as_gray(self.images[index])
        except DataError as err:
            return index, None, None, err
        return index, gray, torch.from_numpy(preprocess(gray, self.size))[None], None


def _collate(items: list[tuple[int, Any, Any, Any]]) -> list[tuple[int, Any, Any, Any]]:
    return items


class LungSegmenter:
    """A trained lung segmentation model, ready to use on radiographs of any size.

    ``predict`` gives a bool mask at the input's size, ``predict_proba`` the float32 probabilities,
    ``segment`` both with the mask's measures, ``predict_many`` a lazy stream of :class:`Segmentation`.
    """

    def __init__(self, model: TrainedModel, device: str | torch.device = "auto", precision: str | None = "auto",
                 threshold: float | None = None, postprocess: bool = True, tta_flip: bool = False,
                 quality: QualityLimits | None = None) -> None:
        self.device = device if isinstance(device, torch.device) else pick_device(str(device))
        self.description: ModelDescription = model.description
        self.precision = resolve_precision(self.device, precision, model.description.precision)
        self.threshold = float(model.description.threshold if threshold is None else threshold)
        self.postprocess, self.tta_flip = postprocess, tta_flip
        self.quality = quality or QualityLimits()
        self.channels_last = model.channels_last
        net = model.net.to(self.device).eval()
        self.net: nn.Module = net.to(memory_format=torch.channels_last) if self.channels_last else net
        divisor = int(getattr(self.net, "divisor", 1))
        size = self.description.image_size
        if not isinstance(size, int) or size < divisor or size % divisor:
            raise LungsegError(f"image_size={size}: must be a positive multiple of {divisor} for this model")

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto", image_size: int | None = None,
                        **options: Any) -> LungSegmenter:
        """Load a checkpoint written by ``lungseg.train``; everything else comes from the checkpoint itself
        (``image_size``, ``threshold``, ``precision`` override it; see :class:`LungSegmenter` for the rest)."""
        return cls(load_checkpoint(path, image_size), device, **options)

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str | torch.device = "auto", revision: str | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool = False,
                        **options: Any) -> LungSegmenter:
        """Load a folder written by ``lungseg.export format=pretrained`` or a Hugging Face Hub id holding one."""
        return cls(load_pretrained(source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only),
                   device, **options)

    @property
    def image_size(self) -> int:
        """The square size the model runs at (inputs are resized to it, outputs back to the input's size)."""
        return self.description.image_size

    @property
    def metadata(self) -> dict[str, Any]:
        """The model's description: input size, preprocessing, threshold, precision, config, data, metrics."""
        return self.description.to_dict()

    # --- the model on preprocessed batches (evaluation works at the model's size) ---

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, s, s) in fp32 on the CPU of preprocessed images (N, 1, s, s) in [0, 1]."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            return self.net(images).float().cpu()

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Lung probabilities (N, 1, s, s) in fp32; with ``tta_flip`` averaged with the mirrored image's."""
        probs = torch.sigmoid(self.logits(images))
        if self.tta_flip:
            probs = (probs + torch.sigmoid(self.logits(images.flip(-1))).flip(-1)) / 2
        return probs

    # --- from probabilities at the model's size to the final mask at the input's size ---

    def finish(self, gray: np.ndarray, prob: np.ndarray) -> Segmentation:
        """Upsample ``prob`` (s, s) to ``gray``'s size, threshold, post-process and measure the mask."""
        h, w = gray.shape
        prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) if prob.shape != (h, w) else prob
        raw = (prob >= self.threshold).astype(np.uint8)
        final, stats = finish_mask(raw, self.postprocess, self.quality)
        return Segmentation(final > 0, prob.astype(np.float32, copy=False), gray, stats)

    # --- the public API ---

    def segment(self, image: ImageInput) -> Segmentation:
        """One radiograph (path or array) -> its :class:`Segmentation`."""
        gray = as_gray(image)
        prob = self.probabilities(torch.from_numpy(preprocess(gray, self.image_size))[None, None])
        return self.finish(gray, prob[0, 0].numpy())

    def predict(self, image: ImageInput) -> np.ndarray:
        """One radiograph (path or array) -> bool lung mask (H, W) at its own size."""
        return self.segment(image).mask

    def predict_proba(self, image: ImageInput) -> np.ndarray:
        """One radiograph (path or array) -> float32 lung probabilities (H, W) at its own size."""
        return self.segment(image).probability

    def predict_many(self, images: Iterable[ImageInput], batch_size: int = 8, num_workers: int = 0,
                     skip_errors: bool = False) -> Iterator[Segmentation | DataError]:
        """Segment ``images`` in batches, lazily and in order: decoding (``num_workers`` processes) and the
        upsampling/cleaning of one batch overlap with the model's work on the next. An unreadable input raises
        its DataError, or with ``skip_errors`` is yielded as that error in its place."""
        items = images if isinstance(images, Sequence) else list(images)
        loader = DataLoader(_Inputs(items, self.image_size), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=_collate)
        pending: deque[Future | DataError] = deque()
        with ThreadPoolExecutor(FINISHERS) as pool:
            for batch in loader:
                errors = [err for *_, err in batch if err is not None]
                if errors and not skip_errors:
                    raise errors[0]
                ready = [tensor for _, _, tensor, err in batch if err is None]
                rows = iter(self.probabilities(torch.stack(ready))[:, 0].numpy() if ready else ())
                entries: list[Future | DataError] = [  # in input order, errors in their inputs' places
                    err if err is not None else pool.submit(self.finish, gray, next(rows))
                    for _, gray, _, err in batch]
                pending.extend(entries)
                while len(pending) > len(entries):  # the previous batch finishes while this one ran
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())


def _result(item: Future | DataError) -> Segmentation | DataError:
    return item if isinstance(item, DataError) else item.result()
