"""lungseg: lung segmentation of chest X-rays with an enhanced U-Net."""

import os

# albumentations checks PyPI for updates at import; keep every import offline and quiet.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

from lungseg import resolvers as _resolvers  # noqa: E402

_resolvers.register()
