"""LungSegmenter: the one road from pixels to a lung mask (preprocess -> network -> upsample ->
threshold -> post-process), used by the Python API, ``lungseg.predict``, ``lungseg.evaluate`` and
export's parity check.

    from lungseg import LungSegmenter
    seg = LungSegmenter.from_checkpoint("best.ckpt")
    mask = seg.predict("chest.png")          # bool (H, W) at the image's own size
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungseg.artifacts.description import ModelDescription
from lungseg.data.images import preprocess, require_radiograph, to_gray8
from lungseg.errors import DataError, LungsegError
from lungseg.inference.backends import Backend, load_backend, model_sources
from lungseg.inference.gate import OK, Status, check_image
from lungseg.inference.inputs import read_checked, read_input
from lungseg.inference.postprocess import PlausibilityLimits, finish_mask
from lungseg.inference.quality import (
    REVIEW_BELOW,
    QualitySettings,
    features,
    score,
    tta_inputs,
    tta_outputs,
)
from lungseg.settings import fraction

ImageInput = np.ndarray | str | Path
# threads that upsample, threshold and clean masks while the model runs (OpenCV releases the GIL)
FINISHERS = 2
POLARITIES = ("auto", "as_read")
# polarity="auto": a film whose mask scores below POLARITY_CHECK_BELOW is also segmented with its
# grey levels inverted, and read inverted when that mask scores at least POLARITY_ACCEPT: a mask to
# trust where the film as read gives none (an unsure model never turns films). Chosen on train and
# val films (docs/quality.md).
POLARITY_CHECK_BELOW, POLARITY_ACCEPT = 0.8, 0.9


@dataclass
class Segmentation:
    """One input's result at its own size: the final mask, the probabilities, the mask's measures
    and how far to trust it (``lungseg.inference.quality``)."""

    mask: np.ndarray  # bool (H, W): thresholded and, when the segmenter post-processes, cleaned
    probability: np.ndarray  # float32 (H, W) in [0, 1]
    gray: np.ndarray  # uint8 (H, W): the input as the model's preprocessing read it
    # predictions.csv's measures, quality_score included
    stats: dict[str, Any] = field(default_factory=dict)
    quality_score: float = float("nan")  # an estimate of the mask's Dice, in [0, 1]
    needs_review: bool = False  # quality_score below the segmenter's operating point
    # what the score was computed from
    quality_features: dict[str, float] = field(default_factory=dict)
    # read with its grey levels inverted (a MONOCHROME1 film read as MONOCHROME2)
    inverted: bool = False
    status: Status = OK  # the input gate's verdict: ok, or flagged with the reason (gate=True)
    source: Any = None  # the DICOM the film came from (``lungseg.dicom.read.DicomFilm``), else None


@dataclass(frozen=True)
class Refused:
    """An input the gate refused (gate=True): no mask; yielded in its place by ``predict_many``."""

    image: str  # its path, or "image array"
    status: Status  # status "refused" and the reason
    source: Any = None  # the DICOM it came from, if it was one

    def __str__(self) -> str:
        return f"{self.image}: refused: {self.status.reason}"


class RefusedInput(DataError):
    """``segment``/``predict`` on one input the gate refused."""


def as_gray(image: ImageInput, intensity: str = "window") -> np.ndarray:
    """A path (PNG/JPEG/TIFF/BMP/DICOM) or an array (H x W or H x W x C; uint8, uint16 or float) as
    uint8 grayscale at its own size, by the model's ``intensity`` rule. Three-channel arrays are
    taken in OpenCV's BGR order, as files are decoded."""
    if isinstance(image, (str, Path)):
        return read_input(Path(image), intensity)
    array = np.asarray(image)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise DataError(
            f"image array of dtype {array.dtype}: expected uint8, uint16 or float pixels"
        )
    require_radiograph(array, "image array")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError("image array holds NaN or infinite pixels; replace them before predicting")
    return to_gray8(array, intensity)


def read_gated(
    image: ImageInput, intensity: str = "window"
) -> tuple[np.ndarray | None, Status, Any]:
    """An input through the input gate: (grayscale, or None when refused; the verdict; its DICOM or
    None)."""
    if isinstance(image, (str, Path)):
        return read_checked(Path(image), intensity)
    gray = as_gray(image, intensity)  # validates the array first
    status = check_image(np.asarray(image), gray=gray if intensity == "window" else None)
    return (None if status.refused else gray), status, None


def _prepare(
    image: ImageInput, size: int, intensity: str, gated: bool
) -> tuple[np.ndarray, np.ndarray, Status, Any] | DataError | Refused:
    """An input as (grayscale at its own size, model input (1, s, s) float32, the gate's verdict,
    its DICOM), or the DataError it raised, or its refusal (``gated``: through the input gate)."""
    try:
        gray, status, source = (
            read_gated(image, intensity) if gated else (as_gray(image, intensity), OK, None)
        )
    except DataError as err:
        return err
    if gray is None:
        return Refused(
            str(image) if isinstance(image, (str, Path)) else "image array", status, source
        )
    return gray, preprocess(gray, size)[None], status, source


class LungSegmenter:
    """A trained lung segmentation model, ready to use on radiographs of any size.

    ``predict`` gives a bool mask at the input's size, ``predict_proba`` the float32 probabilities,
    ``segment`` both with the mask's measures and quality score, ``predict_many`` a lazy stream of
    :class:`Segmentation`. ``quality_tta`` adds the flip and zoom views to the quality score (two
    more forward passes); ``review_below`` is the score under which a mask ``needs_review`` (None:
    ``lungseg.inference.quality``'s). ``polarity="auto"`` reads a film with inverted grey levels
    (white lungs: a MONOCHROME1 film saved without its tag) the right way round: a film whose mask
    scores low is segmented inverted too, and the clearly better reading is kept
    (``Segmentation.inverted``); ``"as_read"`` trusts the file. ``gate=True`` puts every input
    through the input gate (``lungseg.inference.gate``): a refused one gets no mask (``Refused`` in
    ``predict_many``'s stream, ``RefusedInput`` from ``segment``), a flagged one carries the reason.
    """

    def __init__(
        self,
        backend: Backend,
        threshold: float | None = None,
        postprocess: bool = True,
        tta_flip: bool = False,
        plausibility: PlausibilityLimits | None = None,
        quality_tta: bool = False,
        review_below: float | None = None,
        polarity: str = "auto",
        gate: bool = False,
    ) -> None:
        self.backend = backend
        self.description: ModelDescription = backend.description
        self.threshold = fraction(
            self.description.threshold if threshold is None else threshold, "threshold"
        )
        fraction(review_below, "review_below", open_interval=False, optional=True)
        self.postprocess, self.tta_flip = postprocess, tta_flip
        self.plausibility = plausibility or PlausibilityLimits()
        self.scoring = QualitySettings(
            bool(quality_tta), REVIEW_BELOW if review_below is None else float(review_below)
        )
        self.gate = bool(gate)
        if polarity not in POLARITIES:
            raise LungsegError(f"polarity={polarity!r}: must be one of {', '.join(POLARITIES)}")
        self.polarity = polarity
        size, divisor = self.description.image_size, backend.divisor
        if not isinstance(size, int) or size < divisor or size % divisor:
            raise LungsegError(
                f"image_size={size}: must be a positive multiple of {divisor} for this model"
            )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        image_size: int | None = None,
        precision: str | None = "auto",
        **options: Any,
    ) -> LungSegmenter:
        """Load a checkpoint written by ``lungseg.train``; everything else comes from the checkpoint
        itself (``image_size``, ``threshold``, ``precision`` override it; see :class:`LungSegmenter`
        for the rest)."""
        from lungseg.artifacts.checkpoint import load_checkpoint
        from lungseg.inference.backends.pytorch import TorchBackend

        return cls(TorchBackend(load_checkpoint(path, image_size), device, precision), **options)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        device: str = "auto",
        precision: str | None = "auto",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        **options: Any,
    ) -> LungSegmenter:
        """Load a folder written by ``lungseg.export format=pretrained`` or a Hugging Face Hub id
        holding one."""
        from lungseg.artifacts.pretrained import load_pretrained
        from lungseg.inference.backends.pytorch import TorchBackend

        model = load_pretrained(
            source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return cls(TorchBackend(model, device, precision), **options)

    @classmethod
    def from_onnx(
        cls, path: str | Path, device: str = "auto", threads: int | None = None, **options: Any
    ) -> LungSegmenter:
        """Load an ONNX file written by ``lungseg.export format=onnx`` (fp32 or INT8); runs without
        torch."""
        from lungseg.inference.backends.onnxruntime import OnnxBackend

        return cls(OnnxBackend(path, device, threads), **options)

    @classmethod
    def from_openvino(
        cls,
        path: str | Path,
        device: str = "auto",
        threads: int | None = None,
        precision: str | None = "auto",
        **options: Any,
    ) -> LungSegmenter:
        """Load an OpenVINO IR (``.xml`` + ``.bin``, ``lungseg.export format=openvino``, fp32 or
        INT8) or an ONNX file into OpenVINO; runs without torch. ``precision``: the float
        operations' (auto, 32-true, bf16-mixed)."""
        from lungseg.inference.backends.openvino import OpenVinoBackend

        return cls(OpenVinoBackend(path, device, threads, precision), **options)

    @classmethod
    def load(
        cls,
        source: str | Path | Sequence[str | Path],
        device: str = "auto",
        precision: str | None = "auto",
        image_size: int | None = None,
        threads: int | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> LungSegmenter:
        """Any lungseg model: an ``.onnx`` file, an OpenVINO ``.xml``, a checkpoint (any other
        file), a pretrained folder, an installed model's name or a Hub id; a list of them is an
        ensemble (their probabilities averaged). ``backend``: torch, onnxruntime, openvino, auto
        (the fastest here, timed once and cached) or None (by the file). ``image_size`` applies to
        checkpoints from before lungseg 0.2, ``threads`` to ONNX and OpenVINO models."""
        sources = model_sources(source)
        backends = [
            load_backend(s, device, precision, image_size, threads, backend) for s in sources
        ]
        if len(backends) == 1:
            return cls(backends[0], **options)
        from lungseg.inference.backends.ensemble import EnsembleBackend

        return cls(EnsembleBackend(backends, [str(s) for s in sources]), **options)

    @property
    def image_size(self) -> int:
        """The square size the model runs at (inputs are resized to it, outputs back to the input's
        size)."""
        return self.description.image_size

    @property
    def precision(self) -> str:
        """How the network runs: 32-true, bf16-mixed, 16-mixed (PyTorch) or int8 (a quantised ONNX
        model)."""
        return self.backend.precision

    @property
    def device(self) -> Any:
        """Where the network runs (a torch.device, or "cpu"/"cuda" for ONNX Runtime)."""
        return self.backend.device

    @property
    def metadata(self) -> dict[str, Any]:
        """The model's description: input size, preprocessing, threshold, precision, config, data,
        metrics."""
        return self.description.to_dict()

    # --- the model on preprocessed batches (evaluation works at the model's size) ---

    def logits(self, images: Any) -> Any:
        """Logits (N, 1, s, s) fp32 torch tensor of preprocessed images (PyTorch models only:
        evaluation's loss)."""
        return self.backend.logits(images)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Lung probabilities (N, 1, s, s) float32 of preprocessed images; with ``tta_flip``
        averaged with the mirrored image's."""
        probs = self.backend.probabilities(images)
        if self.tta_flip:
            probs = (
                probs
                + self.backend.probabilities(np.ascontiguousarray(images[..., ::-1]))[..., ::-1]
            ) / 2
        return probs

    def quality_views(self, images: np.ndarray) -> np.ndarray | None:
        """With ``quality_tta``: the probabilities (N, 2, s, s) of preprocessed images mirrored and
        zoomed out, mapped back onto the films, for the quality score; else None (no extra forward
        pass)."""
        if not self.scoring.tta:
            return None
        return tta_outputs(self.backend.probabilities(tta_inputs(np.asarray(images, np.float32))))

    def _features(self, prob: np.ndarray) -> dict[str, float]:
        return features(prob, self.threshold, self.postprocess)

    def orient(
        self, images: np.ndarray, probs: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, float] | None]]:
        """The model on preprocessed images (N, 1, s, s) read the right way round: (the images so,
        their probabilities, which films were read inverted, each film's quality features without
        TTA where the check computed them: None with ``polarity="as_read"``, which leaves them to
        ``finish``). With ``polarity="auto"`` a film whose mask scores below
        ``POLARITY_CHECK_BELOW`` is run again inverted (1 - x: preprocessing is linear in the grey
        level), and read so when that mask scores at least ``POLARITY_ACCEPT``. ``probs``: the
        images' probabilities as read, when already computed."""
        probs = self.probabilities(images) if probs is None else probs
        inverted = np.zeros(len(images), bool)
        if self.polarity == "as_read":
            return images, probs, inverted, [None] * len(images)
        found: list[dict[str, float] | None] = [self._features(p) for p in probs[:, 0]]
        suspects = [
            i for i, f in enumerate(found) if f is not None and score(f) < POLARITY_CHECK_BELOW
        ]
        if suspects:
            probs = probs.copy()  # the caller's array stays as it was
            flipped = self.probabilities(np.ascontiguousarray(1 - images[suspects]))
            for i, prob in zip(suspects, flipped, strict=True):
                other = self._features(prob[0])
                if score(other) >= POLARITY_ACCEPT:
                    probs[i], inverted[i], found[i] = prob, True, other
        if inverted.any():
            images = np.where(inverted[:, None, None, None], 1 - images, images)
        return images, probs, inverted, found

    def _model(
        self, images: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[dict[str, float] | None], np.ndarray | None]:
        """(probabilities, inverted flags, quality features, TTA views) of preprocessed images."""
        images, probs, inverted, found = self.orient(images)
        return probs, inverted, found, self.quality_views(images)

    # --- from probabilities at the model's size to the final mask at the input's size ---

    def finish(
        self,
        gray: np.ndarray,
        prob: np.ndarray,
        views: np.ndarray | None = None,
        inverted: bool = False,
        found: dict[str, float] | None = None,
        status: Status = OK,
        source: Any = None,
    ) -> Segmentation:
        """Score the mask from ``prob`` (s, s) at the model's size (and its TTA ``views``, (V, s,
        s)); upsample ``prob`` to ``gray``'s size, threshold, post-process and measure the mask.
        ``inverted``: ``prob`` came from the film's inverted grey levels (``gray`` is returned so);
        ``found``: ``prob``'s quality features without TTA, when already computed; ``status`` and
        ``source``: the gate's verdict and the DICOM, carried along."""
        if found is None or views is not None:
            found = features(prob, self.threshold, self.postprocess, views)
        if inverted:
            gray = 255 - gray
        # as predictions.csv writes it, so needs_review agrees with the file
        quality = round(score(found), 6)
        review = bool(quality < self.scoring.review_below)
        h, w = gray.shape
        prob = (
            cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
            if prob.shape != (h, w)
            else prob
        )
        raw = (prob >= self.threshold).astype(np.uint8)
        final, stats = finish_mask(raw, self.postprocess, self.plausibility)
        stats.update(
            quality_score=quality,
            needs_review=review,
            inverted=bool(inverted),
            status=status.status,
            status_reason=status.reason,
        )
        return Segmentation(
            final > 0,
            prob.astype(np.float32, copy=False),
            gray,
            stats,
            quality,
            review,
            found,
            bool(inverted),
            status,
            source,
        )

    # --- the public API ---

    def read(self, image: ImageInput) -> np.ndarray:
        """One radiograph (path or array) as the uint8 grayscale this model reads it (its intensity
        rule)."""
        return as_gray(image, self.description.intensity)

    def segment(self, image: ImageInput) -> Segmentation:
        """One radiograph (path or array) -> its :class:`Segmentation` (with ``gate``:
        ``RefusedInput`` when the gate refuses it)."""
        prepared = _prepare(image, self.image_size, self.description.intensity, self.gate)
        if isinstance(prepared, DataError):
            raise prepared
        if isinstance(prepared, Refused):
            raise RefusedInput(str(prepared))
        gray, x, status, source = prepared
        prob, inverted, found, views = self._model(x[None])
        return self.finish(
            gray,
            prob[0, 0],
            None if views is None else views[0],
            bool(inverted[0]),
            found[0],
            status,
            source,
        )

    def predict(self, image: ImageInput) -> np.ndarray:
        """One radiograph (path or array) -> bool lung mask (H, W) at its own size."""
        return self.segment(image).mask

    def predict_proba(self, image: ImageInput) -> np.ndarray:
        """One radiograph (path or array) -> float32 lung probabilities (H, W) at its own size."""
        return self.segment(image).probability

    def _finish_into(
        self,
        sink: Callable[[int, Segmentation], Any] | None,
        index: int,
        prepared: tuple[np.ndarray, np.ndarray, Status, Any],
        *outputs: Any,
    ) -> Any:
        """:meth:`finish` one input, then hand it to ``sink`` (with its index in the stream) where
        one is given."""
        gray, _, status, source = prepared
        result = self.finish(gray, *outputs, status=status, source=source)
        return result if sink is None else sink(index, result)

    def predict_many(
        self,
        images: Iterable[ImageInput],
        batch_size: int = 8,
        num_workers: int | None = None,
        skip_errors: bool = False,
        timing: dict[str, float] | None = None,
        sink: Callable[[int, Segmentation], Any] | None = None,
    ) -> Iterator[Any]:
        """Segment ``images`` in batches, lazily and in order: decoding (``num_workers`` threads;
        None: the backend's default) and the upsampling/cleaning of one batch overlap with the
        model's work on the next. An unreadable input raises its DataError, or with ``skip_errors``
        is yielded as that error in its place; with ``gate``, a refused input is yielded as its
        :class:`Refused` in its place. ``timing`` (a dict) receives ``model_s``: the seconds spent
        in the network, for a model-only rate. ``sink(index, segmentation)`` runs beside the
        cleaning, in the same threads (writing an input's files while the model runs the next
        batch), and its return value is yielded instead of the segmentation."""
        if isinstance(images, (str, Path)):
            raise LungsegError(
                f"predict_many takes a list of images; for one image use predict({str(images)!r})"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise LungsegError(f"batch_size={batch_size}: must be a whole number >= 1")
        items = images if isinstance(images, Sequence) else list(images)
        workers = max(
            1, self.backend.default_workers() if num_workers is None else int(num_workers)
        )
        starts = range(0, len(items), max(1, int(batch_size)))
        pending: deque[Future | DataError | Refused] = deque()
        with ThreadPoolExecutor(workers) as decoders, ThreadPoolExecutor(FINISHERS) as finishers:

            def decode(start: int) -> list[Future]:
                return [
                    decoders.submit(
                        _prepare, image, self.image_size, self.description.intensity, self.gate
                    )
                    for image in items[start : start + batch_size]
                ]

            # the next batch decodes while this one runs
            batches = deque(decode(start) for start in starts[:2])
            for k in range(len(starts)):
                prepared = [f.result() for f in batches.popleft()]
                if k + 2 < len(starts):
                    batches.append(decode(starts[k + 2]))
                first_error = next(
                    (i for i, p in enumerate(prepared) if isinstance(p, DataError)), None
                )
                # the inputs before it are delivered, then it
                if first_error is not None and not skip_errors:
                    prepared, error = prepared[:first_error], prepared[first_error]
                ready = [p for p in prepared if not isinstance(p, (DataError, Refused))]
                tick = time.perf_counter()
                outputs: Iterator[tuple[Any, ...]] = iter(())
                if ready:
                    probs, inverted, found, views = self._model(np.stack([p[1] for p in ready]))
                    outputs = zip(
                        probs[:, 0],
                        views if views is not None else [None] * len(ready),
                        inverted,
                        found,
                        strict=True,
                    )
                if timing is not None:
                    timing["model_s"] = timing.get("model_s", 0.0) + time.perf_counter() - tick
                # in input order, errors in their inputs' places
                entries: list[Future | DataError | Refused] = [
                    p
                    if isinstance(p, (DataError, Refused))
                    else finishers.submit(self._finish_into, sink, starts[k] + j, p, *next(outputs))
                    for j, p in enumerate(prepared)
                ]
                pending.extend(entries)
                if first_error is not None and not skip_errors:
                    while pending:
                        yield _result(pending.popleft())
                    raise error
                while len(pending) > len(entries):  # the previous batch finishes while this one ran
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())


def _result(item: Future | DataError | Refused) -> Any:
    return item if isinstance(item, (DataError, Refused)) else item.result()
