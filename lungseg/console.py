"""A quiet, honest console: what a lungseg command prints is what matters to its user."""

from __future__ import annotations

import logging
import warnings

# Lightning's advert for its cloud logger, printed on every fit.
ADVERTS = ("litlogger",)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(word in message for word in ADVERTS)


def quiet() -> None:
    """Drop library adverts and the deprecation notices of library internals the user cannot act
    on."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropAdverts())
    # lightning's own pytree helper uses torch's deprecated LeafSpec (fixed in lightning, not here)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings(
        "ignore", category=DeprecationWarning, module=r"(lightning|lightning_utilities|torch)\."
    )
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
