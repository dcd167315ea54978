"""Offline model install (lungseg.artifacts.pretrained, the lungseg-model command): a pretrained
folder's card records its weights' SHA-256; install copies a folder or zip into the store, checked,
and LungSegmenter.from_pretrained finds it by name with no network; a tampered file is refused in
one line."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lungseg.artifacts.checkpoint import load_checkpoint
from lungseg.artifacts.model_card import recorded_weights_sha256
from lungseg.artifacts.pretrained import install, load_pretrained, save_pretrained
from lungseg.artifacts.store import (
    file_sha256,
    installed,
    installed_model,
    store_dir,
    verify,
    verify_folder,
)
from lungseg.errors import EXIT_USER_ERROR, CheckpointError, LungsegError
from lungseg.inference.segmenter import LungSegmenter
from lungseg.model_store import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model store for the test (LUNGSEG_HOME), and no network for the Hub."""
    monkeypatch.setenv("LUNGSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "home"


@pytest.fixture
def exported(tiny_ckpt: Path, tmp_path: Path) -> Path:
    return save_pretrained(load_checkpoint(tiny_ckpt), tmp_path / "cxr-tiny")


def flip_one_byte(path: Path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_card_records_the_weights_it_was_written_with(exported: Path, tmp_path: Path) -> None:
    recorded = recorded_weights_sha256((exported / "README.md").read_text())
    assert recorded == file_sha256(exported / "model.safetensors")
    assert f"| model.safetensors SHA-256 | `{recorded}` |" in (exported / "README.md").read_text()
    # saving again into the same folder rewrites the card (a stale card would name other weights)
    (exported / "README.md").write_text("an old card\n")
    save_pretrained(load_pretrained(exported), exported)
    assert recorded_weights_sha256((exported / "README.md").read_text()) == recorded


def test_install_then_load_by_name_offline(
    home: Path, exported: Path, tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install", str(exported)]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith(f"installed cxr-tiny at {store_dir() / 'cxr-tiny'}")
        and file_sha256(exported / "model.safetensors") in out
    )
    files = sorted(p.name for p in (home / "models" / "cxr-tiny").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    assert [p.name for p in (home / "models").iterdir() if p.name.startswith(".")] == [
        ".cxr-tiny.lock"
    ]  # no staging
    seg = LungSegmenter.from_pretrained("cxr-tiny", "cpu", precision="32")
    original = LungSegmenter.from_checkpoint(tiny_ckpt, "cpu", precision="32")
    image = np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)
    np.testing.assert_array_equal(seg.predict_proba(image), original.predict_proba(image))
    assert LungSegmenter.load("cxr-tiny", "cpu").image_size == 32  # any loader of folders
    assert installed() == [("cxr-tiny", home / "models" / "cxr-tiny")]
    assert main(["list"]) == 0 and "cxr-tiny\tok\t" in capsys.readouterr().out
    assert verify("cxr-tiny") == file_sha256(exported / "model.safetensors")
    # a name installed twice needs --force; a zip installs under its own name
    with pytest.raises(LungsegError, match="cxr-tiny: already installed"):
        install(exported)
    archive = exported.parent / "packed.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in exported.iterdir():
            z.write(f, f"cxr-tiny/{f.name}")
    assert install(archive).name == "packed"
    assert install(archive, name="cxr-tiny", force=True) == home / "models" / "cxr-tiny"
    assert installed_model("someone/hub-model") is None and installed_model("absent") is None


def test_a_tampered_file_is_refused_in_one_line(
    home: Path, exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(exported, name="good")
    tampered = exported.parent / "tampered"
    tampered.mkdir()
    for f in exported.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    flip_one_byte(tampered / "model.safetensors")
    expected = file_sha256(exported / "model.safetensors")
    actual = file_sha256(tampered / "model.safetensors")
    with pytest.raises(SystemExit) as code:
        main(["install", str(tampered)])
    assert code.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {tampered / 'model.safetensors'}: refused: its SHA-256 is {actual}, "
        f"its model card records {expected}; the file was altered or damaged, install "
        "the model again from its source"
    )
    assert not (home / "models" / "tampered").exists()
    # tampered after install: loading and verify refuse it; list says which
    flip_one_byte(home / "models" / "good" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"good/model.safetensors: refused: its SHA-256 is"):
        LungSegmenter.from_pretrained("good", "cpu")
    with pytest.raises(SystemExit):
        main(["verify", "good"])
    assert main(["list"]) == 2 and "good\trefused\t" in capsys.readouterr().out


def test_folders_that_cannot_be_checked_or_loaded_are_not_installed(
    home: Path, exported: Path, tmp_path: Path
) -> None:
    no_hash = tmp_path / "no-hash"
    no_hash.mkdir()
    for f in exported.iterdir():
        (no_hash / f.name).write_bytes(f.read_bytes())
    (no_hash / "README.md").write_text("# a card from an older lungseg\n")
    with pytest.raises(CheckpointError, match="README.md: records no model.safetensors SHA-256"):
        install(no_hash)
    config = json.loads((exported / "config.json").read_text())
    (no_hash / "README.md").write_bytes((exported / "README.md").read_bytes())
    wider = {**config, "net": {**config["net"], "base_filters": 8}}
    (no_hash / "config.json").write_text(json.dumps(wider))
    with pytest.raises(CheckpointError, match="does not match config.json"):
        install(no_hash)  # the hash matches, the folder does not load
    with pytest.raises(CheckpointError, match="not a lungseg pretrained folder"):
        verify_folder(tmp_path)
    with pytest.raises(LungsegError, match="--name '../x': use letters"):
        install(exported, name="../x")
    with pytest.raises(LungsegError, match="no such folder or zip"):
        install(tmp_path / "absent")
    left = list((home / "models").iterdir()) if (home / "models").exists() else []
    # nothing installed or staged, only lock files
    assert all(p.name.endswith(".lock") for p in left), left
