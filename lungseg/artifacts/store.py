"""The local model store (``$LUNGSEG_HOME/models/<name>``, ``LUNGSEG_HOME`` defaulting to
``~/.cache/lungseg``): where ``lungseg-model install`` puts pretrained folders, and the SHA-256
check of their weights against the model card. Torch-free: the ONNX and OpenVINO paths hash models
through it too."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from pathlib import Path

from lungseg.artifacts.model_card import WEIGHTS_FILE, WEIGHTS_SHA256_LABEL, recorded_weights_sha256
from lungseg.errors import CheckpointError, LungsegError

HOME_ENV = "LUNGSEG_HOME"
DEFAULT_HOME = "~/.cache/lungseg"
CONFIG_FILE, CARD_FILE = "config.json", "README.md"
FOLDER_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a folder name on every OS, no path parts
EXPORT_HINT = "python -m lungseg.export ckpt_path=best.ckpt format=pretrained output=DIR"


def store_dir() -> Path:
    """Where installed models live: ``$LUNGSEG_HOME/models`` (``~/.cache/lungseg/models``)."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser() / "models"


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_folder(folder: str | Path, shown_as: str | Path | None = None) -> str:
    """Check a pretrained folder's weights against the SHA-256 its model card records; return it. A
    missing file, a card without the hash or a mismatch raises one line naming the file (under
    ``shown_as``: where the user's copy is, when ``folder`` is a staged one)."""
    folder = Path(folder)
    shown = Path(shown_as) if shown_as is not None else folder
    missing = [name for name in FOLDER_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{shown}: not a lungseg pretrained folder (no {', '.join(missing)}); write one with "
            f"{EXPORT_HINT}"
        )
    card = (folder / CARD_FILE).read_text(encoding="utf-8", errors="replace")
    recorded = recorded_weights_sha256(card)
    if recorded is None:
        raise CheckpointError(
            f"{shown / CARD_FILE}: records no {WEIGHTS_SHA256_LABEL}, so the "
            "weights cannot be checked; export the model again with this lungseg "
            f"({EXPORT_HINT})"
        )
    actual = file_sha256(folder / WEIGHTS_FILE)
    if actual != recorded:
        raise CheckpointError(
            f"{shown / WEIGHTS_FILE}: refused: its SHA-256 is {actual}, its "
            f"model card records {recorded}; the file was altered or damaged, "
            "install the model again from its source"
        )
    return actual


def installed_model(source: str | Path) -> Path | None:
    """The store folder of ``source`` when it is the bare name of an installed model (not a path
    that exists, not a Hub id), its weights verified; else None."""
    text = str(source)
    if not NAME.fullmatch(text) or Path(text).expanduser().exists():
        return None
    folder = store_dir() / text
    if not (folder / CONFIG_FILE).is_file():
        return None
    verify_folder(folder)
    return folder


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise LungsegError(
            f"--name {name!r}: use letters, digits, '.', '_' and '-' only, starting with a letter "
            "or digit"
        )
    return name


def stage_folder(source: Path, staging: Path) -> Path:
    """Copy the folder's files (or the zip's, from its top level or its one top folder) to
    ``staging``; only the known file names are written, so no archive path can escape. Returns
    where those files are in the source (for messages)."""
    staging.mkdir(parents=True)
    if source.is_dir():
        for name in FOLDER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
        return source
    try:
        with zipfile.ZipFile(source) as archive:
            files = [i for i in archive.infolist() if not i.is_dir()]
            roots = {
                i.filename.rsplit("/", 1)[0] if "/" in i.filename else ""
                for i in files
                if i.filename.rsplit("/", 1)[-1] == CONFIG_FILE
            }
            if len(roots) != 1:
                raise CheckpointError(
                    f"{source}: holds {len(roots) or 'no'} {CONFIG_FILE} files; zip one folder "
                    f"written by {EXPORT_HINT}"
                )
            root = roots.pop()
            for name in FOLDER_FILES:
                member = f"{root}/{name}" if root else name
                if member in archive.namelist():
                    with archive.open(member) as src, open(staging / name, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
            return source / root if root else source
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise CheckpointError(
            f"{source}: not a readable zip ({err}); pass the folder or zip it again"
        ) from None


def installed() -> list[tuple[str, Path]]:
    """The installed models: (name, folder), by name."""
    store = store_dir()
    if not store.is_dir():
        return []
    return [
        (p.name, p)
        for p in sorted(store.iterdir())
        if p.is_dir() and not p.name.startswith(".") and (p / CONFIG_FILE).is_file()
    ]


def verify(name: str) -> str:
    """Re-check an installed model's weights against its card; its SHA-256."""
    folder = store_dir() / check_name(name)
    if not (folder / CONFIG_FILE).is_file():
        raise LungsegError(f"{name}: not installed in {store_dir()}; see lungseg-model list")
    return verify_folder(folder)
