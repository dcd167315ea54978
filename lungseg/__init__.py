"""lungseg: lung segmentation of chest X-rays with an enhanced U-Net.

``from lungseg import LungSegmenter`` is the Python API (imported on first use, so ``import
lungseg`` stays light).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# albumentations checks PyPI for updates at import; keep every import offline and quiet.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["LungSegmenter", "Segmentation", "__version__"]

from lungseg import resolvers as _resolvers  # noqa: E402
from lungseg.version import __version__  # noqa: E402

_resolvers.register()

if TYPE_CHECKING:
    from lungseg.inference.segmenter import LungSegmenter, Segmentation


def __getattr__(name: str) -> Any:
    if name in ("LungSegmenter", "Segmentation"):
        from lungseg.inference import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'lungseg' has no attribute {name!r}")
