"""Tests of the Kaggle download: layout, idempotence, interruption, unsafe zips, credentials; no
network."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungseg.data import download as dl
from lungseg.data.layout import (
    DATASET_DIR,
    IMAGE_DIR,
    MASK_DIR,
    SPLITS,
    find_pairs,
    image_name,
    mask_name,
)
from lungseg.errors import DataError

DATASET = "newra008/lung-mask-image-dataset"
ZIP_NAME = "lung-mask-image-dataset.zip"
PAIRS_PER_SPLIT = 2


def _png(value: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((8, 8), value, np.uint8))
    assert ok
    return buf.tobytes()


def _jpeg(value: int) -> bytes:
    ok, buf = cv2.imencode(".jpeg", np.full((8, 8), value, np.uint8))
    assert ok
    return buf.tobytes()


def dataset_members(prefix: str = "") -> dict[str, bytes]:
    """Zip member names and contents in the Kaggle layout, under ``prefix``."""
    members, n = {}, 0
    for split in SPLITS:
        for _ in range(PAIRS_PER_SPLIT):
            n += 1
            members[f"{prefix}{DATASET_DIR}/{split}/{IMAGE_DIR}/{image_name(n)}"] = _png(10 * n)
            members[f"{prefix}{DATASET_DIR}/{split}/{MASK_DIR}/{mask_name(n)}"] = _jpeg(255)
    return members


def write_zip(
    path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None
) -> Path:
    """Write a zip with ``members`` and optional symlink members (name -> link target)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, link in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, link)
    return path


class FakeKaggleApi:
    """Stands in for KaggleApi: records calls and 'downloads' a prepared zip."""

    def __init__(self, zip_source: Path | None = None, raw: bytes | None = None) -> None:
        self.zip_source, self.raw = zip_source, raw
        self.calls: list[tuple] = []

    def authenticate(self) -> None:
        self.calls.append(("authenticate",))

    def dataset_download_files(
        self, dataset: str, path: str | None = None, unzip: bool = False, quiet: bool = True
    ) -> None:
        self.calls.append(("dataset_download_files", dataset, path, unzip))
        out = Path(path) / f"{dataset.split('/')[-1]}.zip"
        out.write_bytes(self.raw if self.raw is not None else self.zip_source.read_bytes())

    @property
    def downloads(self) -> int:
        return sum(call[0] == "dataset_download_files" for call in self.calls)


@pytest.fixture(autouse=True)
def _isolated_kaggle_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never read the developer's real Kaggle configuration."""
    config = tmp_path / "kaggle-config"
    config.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    return config


@pytest.fixture
def good_zip(tmp_path: Path) -> Path:
    return write_zip(tmp_path / ZIP_NAME, dataset_members())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data" / "lung_mask_dataset"


def listing(root: Path) -> list[str]:
    """What a download left in its root, its lock file aside (kept beside the dataset, empty)."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def assert_nothing_at(root: Path) -> None:
    """Neither a dataset nor a temp folder was left at ``root``; a root the run created is gone."""
    assert not root.exists()


def test_download_extracts_kaggle_layout(root: Path, good_zip: Path) -> None:
    api = FakeKaggleApi(good_zip)
    assert dl.download_dataset(root, api=api) == root.absolute()
    assert api.calls[0] == ("authenticate",)
    assert api.calls[1][1] == DATASET and api.calls[1][3] is False
    # downloaded beside the data, same filesystem
    assert Path(api.calls[1][2]).parent == root.absolute()
    for split in SPLITS:
        pairs, problems = find_pairs(root, split)
        assert len(pairs) == PAIRS_PER_SPLIT and problems == []
        for pair in pairs:
            assert cv2.imread(str(pair.image), cv2.IMREAD_GRAYSCALE).shape == (8, 8)
            assert cv2.imread(str(pair.mask), cv2.IMREAD_GRAYSCALE).shape == (8, 8)
    assert listing(root) == [DATASET_DIR]  # no zip, no temp folders


def test_second_call_does_not_download(
    root: Path, good_zip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api = FakeKaggleApi(good_zip)
    dl.download_dataset(root, api=api)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=dl.__name__):
        assert dl.download_dataset(root, api=api) == root.absolute()
    assert api.downloads == 1
    assert "already in place" in caplog.text and str(root) in caplog.text


def test_force_downloads_again_and_replaces(root: Path, good_zip: Path) -> None:
    api = FakeKaggleApi(good_zip)
    dl.download_dataset(root, api=api)
    stray = root / DATASET_DIR / "train" / IMAGE_DIR / "old-file.txt"
    stray.write_text("from the old copy")
    dl.download_dataset(root, api=api, force=True)
    assert api.downloads == 2
    assert not stray.exists()
    assert len(find_pairs(root, "val")[0]) == PAIRS_PER_SPLIT
    assert listing(root) == [DATASET_DIR]


def test_force_keeps_old_copy_when_new_download_is_bad(
    root: Path, good_zip: Path, tmp_path: Path
) -> None:
    dl.download_dataset(root, api=FakeKaggleApi(good_zip))
    with pytest.raises(DataError, match="corrupt"):
        dl.download_dataset(root, api=FakeKaggleApi(raw=b"not a zip at all"), force=True)
    assert (root / DATASET_DIR).is_dir()
    assert all(len(find_pairs(root, s)[0]) == PAIRS_PER_SPLIT for s in SPLITS)
    assert listing(root) == [DATASET_DIR]


def test_failed_swap_keeps_the_old_copy(
    root: Path, good_zip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dl.download_dataset(root, api=FakeKaggleApi(good_zip))
    (root / DATASET_DIR / "marker").write_text("old")

    def swap_fails(staged: Path, target: Path) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(dl, "replace_dir", swap_fails)
    with pytest.raises(OSError, match="rename failed"):
        dl.download_dataset(root, api=FakeKaggleApi(good_zip), force=True)
    assert (root / DATASET_DIR / "marker").read_text() == "old"
    assert listing(root) == [DATASET_DIR]  # the new copy's working folders are gone too


def test_incomplete_existing_copy_is_not_overwritten_without_force(
    root: Path, good_zip: Path
) -> None:
    (root / DATASET_DIR / "train" / IMAGE_DIR).mkdir(parents=True)
    api = FakeKaggleApi(good_zip)
    with pytest.raises(DataError, match="incomplete"):
        dl.download_dataset(root, api=api)
    assert api.downloads == 0
    dl.download_dataset(root, api=api, force=True)
    assert all(find_pairs(root, s)[0] for s in SPLITS)


@pytest.mark.parametrize("interruption", [RuntimeError("disk went away"), KeyboardInterrupt()])
def test_interrupted_extraction_leaves_nothing_and_rerun_succeeds(
    root: Path, good_zip: Path, monkeypatch: pytest.MonkeyPatch, interruption: BaseException
) -> None:
    real_extract, written = dl._extract_member, []

    def flaky_extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
        if len(written) == 5:
            raise interruption
        real_extract(zf, info, dest)
        written.append(info.filename)

    monkeypatch.setattr(dl, "_extract_member", flaky_extract)
    api = FakeKaggleApi(good_zip)
    with pytest.raises(type(interruption)):
        dl.download_dataset(root, api=api)
    assert len(written) == 5
    assert_nothing_at(root)
    monkeypatch.setattr(dl, "_extract_member", real_extract)
    dl.download_dataset(root, api=api)
    assert api.downloads == 2
    assert all(len(find_pairs(root, s)[0]) == PAIRS_PER_SPLIT for s in SPLITS)


def test_what_a_killed_download_left_is_removed_not_taken_for_the_dataset(
    root: Path, good_zip: Path
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # the extraction folder of a killed download
    leftover = root / f".{dl.EXTRACT_FOLDER}.tmp-{dead.pid}"
    with zipfile.ZipFile(good_zip) as zf:
        zf.extractall(leftover)  # a complete tree, as an interrupted run could leave it
    api = FakeKaggleApi(good_zip)
    dl.download_dataset(root, api=api)
    assert api.downloads == 1 and not leftover.exists()
    assert (root / DATASET_DIR / "test" / MASK_DIR / mask_name(5)).is_file()
    assert listing(root) == [DATASET_DIR]


def test_zip_nested_one_folder_deeper_is_found(root: Path, tmp_path: Path) -> None:
    nested = write_zip(tmp_path / ZIP_NAME, dataset_members("lung_mask_dataset/"))
    dl.download_dataset(root, api=FakeKaggleApi(nested))
    assert all(len(find_pairs(root, s)[0]) == PAIRS_PER_SPLIT for s in SPLITS)
    assert listing(root) == [DATASET_DIR]


def test_zip_without_the_layout_is_rejected(root: Path, tmp_path: Path) -> None:
    members = {k: v for k, v in dataset_members().items() if "/test/" not in k}
    bad = write_zip(tmp_path / ZIP_NAME, members)
    with pytest.raises(DataError, match="no complete ChestXray") as err:
        dl.download_dataset(root, api=FakeKaggleApi(bad))
    assert "test" in str(err.value)
    assert_nothing_at(root)


@pytest.mark.parametrize(
    "evil",
    ["../evil.txt", "ChestXray/../../evil.txt", "/tmp/evil-abs.txt", "C:/evil.txt", "..\\evil.txt"],
)
def test_zip_slip_is_rejected(root: Path, tmp_path: Path, evil: str) -> None:
    bad = write_zip(tmp_path / ZIP_NAME, {**dataset_members(), evil: b"pwned"})
    with pytest.raises(DataError) as err:
        dl.download_dataset(root, api=FakeKaggleApi(bad))
    assert evil.replace("\\", "\\\\") in str(err.value) and ZIP_NAME in str(err.value)
    assert "leaves the target folder" in str(err.value)
    assert_nothing_at(root)
    assert not (root.parent / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil-abs.txt").exists()


def test_symlink_member_is_rejected(root: Path, tmp_path: Path) -> None:
    bad = write_zip(
        tmp_path / ZIP_NAME, dataset_members(), symlinks={"ChestXray/train/link": "/etc/passwd"}
    )
    with pytest.raises(DataError, match="symbolic link") as err:
        dl.download_dataset(root, api=FakeKaggleApi(bad))
    assert "ChestXray/train/link" in str(err.value)
    assert_nothing_at(root)


def test_zip_bomb_member_is_rejected(root: Path, tmp_path: Path) -> None:
    bad = write_zip(
        tmp_path / ZIP_NAME, {**dataset_members(), "ChestXray/bomb.bin": bytes(20 * 2**20)}
    )
    with pytest.raises(DataError, match="zip bomb") as err:
        dl.download_dataset(root, api=FakeKaggleApi(bad))
    assert "ChestXray/bomb.bin" in str(err.value)
    assert_nothing_at(root)


def test_total_size_over_limit_is_rejected(root: Path, good_zip: Path) -> None:
    with pytest.raises(DataError, match="add up to") as err:
        dl.download_dataset(root, api=FakeKaggleApi(good_zip), max_bytes=100)
    assert ZIP_NAME in str(err.value)
    assert_nothing_at(root)


def test_corrupt_zip_says_rerun(root: Path, good_zip: Path) -> None:
    truncated = good_zip.read_bytes()[: good_zip.stat().st_size // 2]
    for raw in (b"garbage", truncated):
        with pytest.raises(DataError, match="corrupt.*rerun"):
            dl.download_dataset(root, api=FakeKaggleApi(raw=raw))
        assert_nothing_at(root)


def test_bad_crc_is_corrupt(root: Path, good_zip: Path) -> None:
    data = bytearray(good_zip.read_bytes())
    with zipfile.ZipFile(good_zip) as zf:
        info = zf.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 2] ^= 0xFF  # flip a byte of the first member's compressed data
    with pytest.raises(DataError, match="corrupt"):
        dl.download_dataset(root, api=FakeKaggleApi(raw=bytes(data)))
    assert_nothing_at(root)


class NoCredentialsApi(FakeKaggleApi):
    """Behaves like KaggleApi 2.x without credentials: prints help, then calls exit(1)."""

    def authenticate(self) -> None:
        print("Authentication required to call the Kaggle API.")
        exit(1)


class RaisingApi(FakeKaggleApi):
    """Behaves like older kaggle versions without credentials."""

    def authenticate(self) -> None:
        raise OSError("Could not find kaggle.json. Make sure it's located in ~/.kaggle.")


def assert_ways_forward(message: str) -> None:
    for needle in (
        "data.root=",
        "+experiment=demo",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "kaggle.json",
        "chmod 600",
        "make data",
    ):
        assert needle in message


@pytest.mark.parametrize("api_class", [NoCredentialsApi, RaisingApi])
def test_missing_credentials_give_one_clear_error(
    root: Path, good_zip: Path, api_class: type, capsys: pytest.CaptureFixture[str]
) -> None:
    api = api_class(good_zip)
    with pytest.raises(DataError) as err:
        dl.download_dataset(root, api=api)
    assert_ways_forward(str(err.value))
    assert api.downloads == 0
    # kaggle's own help is swallowed
    assert "Authentication required" not in capsys.readouterr().out
    assert not root.exists()


def test_real_kaggle_without_credentials(
    root: Path, tmp_path: Path, _isolated_kaggle_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    api = dl._make_api()  # imports kaggle; must neither exit nor need the network
    # The class reads KAGGLE_CONFIG_DIR when kaggle is first imported; point an already imported one
    # here.
    monkeypatch.setattr(type(api), "config_dir", str(_isolated_kaggle_config))
    monkeypatch.setattr(type(api), "config", str(_isolated_kaggle_config / "kaggle.json"))
    with pytest.raises(DataError) as err:
        dl._authenticate(api)
    assert_ways_forward(str(err.value))
    with pytest.raises(DataError, match=r"\+experiment=demo"):
        dl.download_dataset(root)
    assert not root.exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_readable_credentials_warn(
    root: Path,
    good_zip: Path,
    _isolated_kaggle_config: Path,
    caplog: pytest.LogCaptureFixture,
    mode: int,
) -> None:
    creds = _isolated_kaggle_config / "kaggle.json"
    creds.write_text('{"username": "u", "key": "k"}')
    creds.chmod(mode)
    with caplog.at_level(logging.WARNING, logger=dl.__name__):
        dl.download_dataset(root, api=FakeKaggleApi(good_zip))
    assert "chmod 600" in caplog.text and str(creds) in caplog.text
    caplog.clear()
    creds.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger=dl.__name__):
        dl.download_dataset(root, api=FakeKaggleApi(good_zip), force=True)
    assert "chmod" not in caplog.text


def test_import_does_not_import_kaggle() -> None:
    code = (
        "import sys, lungseg.data.download; assert 'kaggle' not in sys.modules, 'kaggle imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "HOME": "/nonexistent"}
    )


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """Run the command line with a config of its own (conf/download.yaml may not exist yet)."""
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    config = f"data:\n  root: data/lung_mask_dataset\ndataset: {DATASET}\nforce: false\n"
    (conf / "download.yaml").write_text(config)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(
        HOME=str(home),
        KAGGLE_CONFIG_DIR=str(tmp_path / "kaggle-config"),
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    cmd = [
        sys.executable,
        "-m",
        "lungseg.data.download",
        "--config-path",
        str(conf),
        f"hydra.run.dir={tmp_path / 'outputs'}",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_cli_without_credentials_exits_2_with_the_ways_forward(tmp_path: Path, root: Path) -> None:
    result = run_cli(tmp_path, f"data.root={root}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: no Kaggle credentials found")
    assert_ways_forward(result.stderr)
    assert "Traceback" not in result.stderr
    assert not root.exists()


def test_cli_with_data_in_place_does_nothing(tmp_path: Path, root: Path) -> None:
    for name, data in dataset_members().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    result = run_cli(tmp_path, f"data.root={root}")
    assert result.returncode == 0, result.stderr
    assert "already in place" in result.stdout + result.stderr
