"""What a trained model records about itself (``ModelDescription``): input size, preprocessing
contract, threshold, training precision, run config, data fingerprint, metrics, provenance. Plain
values only, no torch: checkpoints, pretrained folders and ONNX files all carry it."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lungseg.version import __version__

DESCRIPTION_KEY = "lungseg"  # the checkpoint's self-description lives under this key
FORMAT = 1
# The input contract of every lungseg model (lungseg.data.images.preprocess): how pixels become the
# model input.
PREPROCESSING = {
    "grayscale": "colour -> ITU-R 601 luminance (alpha dropped)",
    # lungseg.data.images.INTENSITY_RULES: 0.5th..99.5th percentile -> 0..255, any depth
    "intensity": "window",
    "resize": "image_size x image_size, cv2.INTER_AREA when shrinking, cv2.INTER_LINEAR when "
    "growing",
    "scale": "uint8 / 255 -> float32 in [0, 1], shape (N, 1, H, W)",
    "output": "one logit per pixel (sigmoid -> lung probability), upsampled bilinearly to the "
    "input's size, "
    "then thresholded",
}
# characters of the data's ATTRIBUTION file kept with the model (licence, sources)
MAX_ATTRIBUTION = 20_000


@dataclass(frozen=True)
class ModelDescription:
    """Everything needed to use a trained model, stored inside its checkpoint and every export."""

    image_size: int
    threshold: float = 0.5
    precision: str = "32-true"  # the training precision, in Lightning's words
    preprocessing: dict[str, str] = field(default_factory=lambda: dict(PREPROCESSING))
    config: dict[str, Any] = field(default_factory=dict)  # the full resolved run config
    data: dict[str, Any] = field(default_factory=dict)  # fingerprint of the training data
    val_metrics: dict[str, float] = field(default_factory=dict)  # this checkpoint's own val scores
    best_metrics: dict[str, float] = field(default_factory=dict)  # best over the run so far
    # filled when the model is evaluated
    test_metrics: dict[str, float] = field(default_factory=dict)
    # an ensemble's members (their descriptions)
    ensemble: list[dict[str, Any]] = field(default_factory=list)
    lungseg_version: str = __version__
    git_commit: str | None = None
    created: str = ""
    format: int = FORMAT

    @property
    def intensity(self) -> str:
        """How the model's inputs become 8-bit (``lungseg.data.images.INTENSITY_RULES``); models
        from before the rule was recorded (lungseg 0.2) used ``minmax``."""
        return self.preprocessing.get("intensity", "minmax")

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (the checkpoint loads with ``weights_only=True``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelDescription:
        """Rebuild from :meth:`to_dict`; unknown keys (a newer writer) are ignored."""
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        return cls(**known)


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the lungseg source tree (``+dirty`` with uncommitted changes); None outside a
    git checkout."""
    folder = folder or Path(__file__).resolve().parents[1]  # the lungseg package
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5
        )
        if head.returncode:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def data_fingerprint(root: Path, files: Mapping[str, list[tuple[Path, Path]]]) -> dict[str, Any]:
    """Root name, pairs per split, a SHA-256 of the sorted relative file list (which files, not
    their bytes) and the text of the root's ATTRIBUTION file (licence, sources) when it has one."""
    digest = hashlib.sha256()
    for split in sorted(files):
        for image, mask in sorted(files[split]):
            for path in (image, mask):
                rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
                digest.update(f"{split}\t{rel.as_posix()}\n".encode())
    attribution = next((p for p in sorted(root.glob("ATTRIBUTION*")) if p.is_file()), None)
    return {
        "root_name": root.name,
        "counts": {s: len(p) for s, p in sorted(files.items())},
        "files_sha256": digest.hexdigest(),
        "attribution": attribution.read_text(errors="replace")[:MAX_ATTRIBUTION]
        if attribution
        else None,
    }


def now() -> str:
    """Local time as an ISO string, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
