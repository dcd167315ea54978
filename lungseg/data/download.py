"""Download the Kaggle lung-mask dataset into ``<root>/ChestXray`` safely, atomically and only once.

``python -m lungseg.data.download [data.root=...] [force=true]`` (config: ``conf/download.yaml``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import stat
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from lungseg.atomic import output_lock, remove_stale, replace_dir, temp_path
from lungseg.config import CONFIG_DIR, command_line
from lungseg.data.layout import DATASET_DIR, IMAGE_DIR, MASK_DIR, SPLITS, find_pairs
from lungseg.errors import DataError, exit_on_user_error, require_extra

log = logging.getLogger(__name__)

DEFAULT_DATASET = "newra008/lung-mask-image-dataset"
ZIP_FOLDER, EXTRACT_FOLDER = "download", "extract"  # working folders beside the target, pid-named
MAX_RATIO = 200  # a member that inflates more than this ...
RATIO_MIN_BYTES = 4 * 2**20  # ... and is bigger than this is taken for a zip bomb
WAYS_FORWARD = (
    "Three ways forward:\n"
    "  1. Kaggle credentials: save kaggle.json (kaggle.com > Settings > API > Create New Token) as "
    "~/.kaggle/kaggle.json and run `chmod 600 ~/.kaggle/kaggle.json`, or export KAGGLE_USERNAME "
    "and "
    "KAGGLE_KEY; then run `make data`\n"
    "  2. a copy you already have: data.root=/path/to/dataset (the folder holding ChestXray/)\n"
    "  3. the built-in sample data: python -m lungseg.train +experiment=demo"
)


def _kaggle_config_dir() -> Path:
    """The folder kaggle reads kaggle.json from (KAGGLE_CONFIG_DIR, ~/.kaggle, or the XDG
    folder)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"]).expanduser()
    legacy = Path.home() / ".kaggle"
    if legacy.exists() or not sys.platform.startswith("linux"):
        return legacy
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


def _warn_if_credentials_readable() -> None:
    """Warn when kaggle.json can be read by group or others."""
    path = _kaggle_config_dir() / "kaggle.json"
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if os.name != "nt" and mode & 0o077:
        log.warning(
            "%s is readable by other users (mode %03o); fix it with: chmod 600 %s",
            path,
            stat.S_IMODE(mode),
            path,
        )


def _make_api() -> Any:
    """A real KaggleApi; kaggle is imported here because importing it tries to authenticate."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        extended = require_extra("kaggle.api.kaggle_api_extended", "kaggle", "Kaggle download")
    return extended.KaggleApi()


def _authenticate(api: Any) -> None:
    """Authenticate ``api``; kaggle's prints, exceptions and sys.exit become one DataError."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            api.authenticate()
    except SystemExit:
        raise DataError(f"no Kaggle credentials found.\n{WAYS_FORWARD}") from None
    except Exception as err:
        detail = f"{type(err).__name__}: {err}"
        raise DataError(f"Kaggle authentication failed ({detail}).\n{WAYS_FORWARD}") from None


def _member_problem(info: zipfile.ZipInfo, dest: Path) -> str | None:
    """Why a zip member must not be extracted into ``dest``, or None when it is safe."""
    name = info.filename
    parts = re.split(r"[\\/]", name)
    if (
        name.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", name)
        or ".." in parts
        or not (dest / name).resolve().is_relative_to(dest.resolve())
    ):
        return "its path leaves the target folder"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "it is a symbolic link"
    if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        return f"it inflates {info.compress_size} to {info.file_size} bytes (a zip bomb?)"
    return None


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
    """Write one checked member under ``dest`` (no permissions or links are restored)."""
    target = dest / info.filename
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, 2**20)


def _safe_extract(zip_path: Path, dest: Path, max_bytes: int) -> None:
    """Extract ``zip_path`` into ``dest`` after rejecting escaping paths, links and zip bombs."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = zf.infolist()
            for info in members:
                problem = _member_problem(info, dest)
                if problem:
                    raise DataError(
                        f"refusing to extract {zip_path}: member {info.filename!r}: {problem}"
                    )
            total = sum(info.file_size for info in members)
            if total > max_bytes:
                biggest = max(members, key=lambda i: i.file_size).filename
                raise DataError(
                    f"refusing to extract {zip_path}: its members add up to {total} bytes "
                    f"(limit {max_bytes}; largest member {biggest!r})"
                )
            for info in members:
                _extract_member(zf, info, dest)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DataError(
            f"the download {zip_path.name} is corrupt ({err}); it was discarded, rerun to "
            "download it again"
        ) from None
    except OSError as err:
        raise DataError(
            f"could not extract {zip_path.name} ({err}); free some disk space "
            "or fix the folder's permissions, then rerun"
        ) from None


def _layout_problems(parent: Path) -> list[str]:
    """What is missing for ``parent/ChestXray`` to be a complete dataset (empty when complete)."""
    base = parent / DATASET_DIR
    problems = [
        f"{base / s / d}: missing"
        for s in SPLITS
        for d in (IMAGE_DIR, MASK_DIR)
        if not (base / s / d).is_dir()
    ]
    if not problems:
        problems = [
            f"{base / s}: no image/mask pair" for s in SPLITS if not find_pairs(parent, s)[0]
        ]
    return problems


def _find_dataset_dir(extracted: Path) -> Path:
    """The complete ``ChestXray`` folder in the extracted tree, at its top or one folder deeper."""
    parents = [extracted] + sorted(d for d in extracted.iterdir() if d.is_dir())
    for parent in parents:
        if not _layout_problems(parent):
            return parent / DATASET_DIR
    raise DataError(
        "the downloaded zip holds no complete "
        f"{DATASET_DIR}/{{{','.join(SPLITS)}}}/{{{IMAGE_DIR},{MASK_DIR}}}/ folder",
        _layout_problems(extracted),
    )


def _download(api: Any, dataset: str, folder: Path) -> Path:
    """Download the dataset zip into ``folder`` and return its path."""
    try:
        api.dataset_download_files(dataset, path=str(folder), unzip=False, quiet=False)
    except (Exception, SystemExit) as err:
        raise DataError(
            f"downloading {dataset} failed ({type(err).__name__}: {err}); check the network "
            f"and the dataset name, then rerun.\n{WAYS_FORWARD}"
        ) from None
    expected = folder / f"{dataset.rstrip('/').split('/')[-1]}.zip"
    zips = [expected] if expected.is_file() else sorted(folder.glob("*.zip"))
    if not zips:
        raise DataError(f"downloading {dataset} produced no zip file in {folder}; rerun")
    return zips[0]


def download_dataset(
    root: str | Path,
    dataset: str = DEFAULT_DATASET,
    api: object | None = None,
    force: bool = False,
    max_bytes: int = 20 * 2**30,
) -> Path:
    """Download ``dataset`` into ``<root>/ChestXray`` unless it is already there; return
    ``root``."""
    root = Path(root).expanduser().absolute()
    target = root / DATASET_DIR
    if target.exists() and not force:
        problems = _layout_problems(root)
        if not problems:
            log.info(
                "The dataset is already in place at %s (pass force=true to download it again)", root
            )
            return root
        raise DataError(
            f"{target} exists but is incomplete; move it away or rerun with force=true", problems
        )
    _warn_if_credentials_readable()
    api = _make_api() if api is None else api
    _authenticate(api)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    with output_lock(target, "data.root"):  # one download into a folder at a time
        remove_stale(root / ZIP_FOLDER)  # what a killed download left
        remove_stale(root / EXTRACT_FOLDER)
        # beside the target
        zips, extracted = temp_path(root / ZIP_FOLDER), temp_path(root / EXTRACT_FOLDER)
        try:
            for temp in (zips, extracted):
                temp.mkdir()
            log.info("Downloading %s into %s", dataset, root)
            zip_path = _download(api, dataset, zips)
            _safe_extract(zip_path, extracted, max_bytes)
            zip_path.unlink()
            # an earlier copy is swapped out only now
            replace_dir(_find_dataset_dir(extracted), target)
        finally:
            for temp in (zips, extracted):
                shutil.rmtree(temp, ignore_errors=True)
            if created and not any(p for p in root.iterdir() if not p.name.endswith(".lock")):
                shutil.rmtree(root, ignore_errors=True)
    log.info("The dataset is in place at %s", root)
    return root


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="download")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Command line: download the dataset configured in conf/download.yaml."""
    download_dataset(cfg.data.root, cfg.dataset, force=cfg.force)


cli = command_line(main)

if __name__ == "__main__":
    cli()
