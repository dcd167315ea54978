"""``backend=auto``: the fastest installed backend for a model on this host, found by a short timing
on first use and remembered in a JSON cache keyed by the model file's SHA-256 and the host (CPU
model, its speed flags, the lungseg and runtime versions) with the device, precision and threads.

The cache is ``$LUNGSEG_HOME/backend-choice.json`` (default ``~/.cache/lungseg/``), written
atomically; a model whose bytes change gets a new key, so it is timed again. Torch is imported only
when a candidate needs it (a checkpoint, or its conversion for OpenVINO).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.atomic import write_text
from lungseg.cpu import cpu_flags, cpu_name
from lungseg.errors import MissingExtraError
from lungseg.version import __version__

log = logging.getLogger(__name__)

HOME_ENV = "LUNGSEG_HOME"
CACHE_NAME = "backend-choice.json"
RUNTIMES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}  # -> module
# A short timing: one warm-up call each, then rounds alternating between the backends.
TIMING_BATCH, TIMING_ROUNDS = 4, 3
clock = time.perf_counter  # what timings read (tests replace it)


def backends_for(source: str | Path) -> list[str]:
    """The backends that can run ``source``, the default first: an ONNX file (ONNX Runtime,
    OpenVINO), an IR ``.xml`` (OpenVINO), else a checkpoint, pretrained folder or Hub id (PyTorch;
    OpenVINO converts it)."""
    suffix = Path(str(source)).suffix.lower()
    if suffix == ".onnx":
        return ["onnxruntime", "openvino"]
    if suffix == ".xml":
        return ["openvino"]
    return ["torch", "openvino"]


def installed(backend: str) -> bool:
    """Whether the runtime of ``backend`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(RUNTIMES[backend]) is not None
    except (ImportError, ValueError):  # a broken or half-removed package
        return False


def cache_path() -> Path:
    """``$LUNGSEG_HOME/backend-choice.json``, else ``~/.cache/lungseg/backend-choice.json``."""
    home = os.environ.get(HOME_ENV)
    folder = Path(home).expanduser() if home else Path.home() / ".cache" / "lungseg"
    return folder / CACHE_NAME


def model_digest(source: str | Path) -> str:
    """SHA-256 of what the model is: a file's bytes (an IR's .xml and .bin), a folder's files
    (names and bytes); a Hub id is keyed by its name."""
    path = Path(str(source)).expanduser()
    digest = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        files = [path] + ([path.with_suffix(".bin")] if path.suffix.lower() == ".xml" else [])
    else:
        digest.update(f"hub:{source}".encode())
        return digest.hexdigest()
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def host() -> dict[str, Any]:
    """What makes timings comparable: the CPU, its speed flags, cores, the runtimes' versions."""
    versions = {"lungseg": __version__}
    for package in ("openvino", "onnxruntime", "torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_name(), "flags": cpu_flags(), "cores": cores, "versions": versions}


def cache_key(digest: str, settings: dict[str, Any]) -> str:
    """The key of one choice: the model's digest, the host, and the settings it was timed with."""
    text = json.dumps({"model": digest, "host": host(), "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_cache(path: Path) -> dict[str, Any]:
    """The cached choices (an unreadable or foreign file counts as empty: it is only a cache)."""
    try:
        entries = json.loads(path.read_text()).get("entries", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def time_backends(
    backends: dict[str, Any], size: int, batch: int = TIMING_BATCH, rounds: int = TIMING_ROUNDS
) -> dict[str, float]:
    """Images/s of each backend on one random batch at the model's size: a warm-up call each,
    then ``rounds`` rounds alternating between them (load changes hit all alike); medians."""
    images = np.random.default_rng(0).random((batch, 1, size, size), dtype=np.float32)
    for backend in backends.values():
        backend.probabilities(images)
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(rounds):
        for name, backend in backends.items():
            start = clock()
            backend.probabilities(images)
            times[name].append(clock() - start)
    return {name: batch / statistics.median(t) for name, t in times.items()}


def describe_rates(rates: dict[str, float], precisions: dict[str, str]) -> str:
    """``openvino bf16-mixed 12.3 img/s, torch bf16-mixed 6.1 img/s``: fastest first."""
    ranked = sorted(rates.items(), key=lambda kv: -kv[1])
    return ", ".join(
        " ".join(filter(None, (name, precisions.get(name), f"{rate:.1f} img/s")))
        for name, rate in ranked
    )


def choose_backend(
    source: str | Path, build: Callable[[str], Any], settings: dict[str, Any]
) -> Any:
    """``build(name)`` of the fastest installed candidate for ``source``: from the cache when this
    model was timed on this host with these ``settings``, else timed now and cached. Logs what it
    picked and why."""
    candidates = [name for name in backends_for(source) if installed(name)]
    if len(candidates) == 1:
        log.info("backend=auto: %s, the one installed backend that runs %s", candidates[0], source)
        return build(candidates[0])
    path = cache_path()
    digest = model_digest(source)
    key = cache_key(digest, settings)
    entries = read_cache(path)
    entry = entries.get(key)
    if isinstance(entry, dict) and entry.get("backend") in candidates:
        log.info(
            "backend=auto: %s for %s (timed %s: %s; cached in %s)",
            entry["backend"],
            source,
            entry.get("timed", "earlier"),
            describe_rates(entry.get("rates", {}), entry.get("precisions", {})),
            path,
        )
        return build(entry["backend"])
    built = {}
    for name in candidates:
        try:
            built[name] = build(name)
        except MissingExtraError as err:  # e.g. OpenVINO on a checkpoint also needs onnx
            log.info("backend=auto: %s left out (%s)", name, err)
    if not built:
        raise MissingExtraError(f"backend=auto: no installed backend can run {source}")
    size = next(iter(built.values())).description.image_size
    rates = time_backends(built, size)
    best = max(rates, key=rates.get)
    precisions = {name: str(backend.precision) for name, backend in built.items()}
    local = Path(str(source)).expanduser()
    where = str(local.resolve()) if local.exists() else str(source)
    entries = {
        k: v
        for k, v in entries.items()  # this model's earlier entries (other bytes) go
        if not (isinstance(v, dict) and v.get("source") == where)
    }
    entries[key] = {
        "backend": best,
        "rates": rates,
        "precisions": precisions,
        "timed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": where,
        "model_sha256": digest,
        "settings": settings,
        "host": host(),
        "batch": TIMING_BATCH,
        "rounds": TIMING_ROUNDS,
    }
    try:
        write_text(path, json.dumps({"format": 1, "entries": entries}, indent=1))
    except OSError as err:  # a read-only home: choose anyway, time again next time
        log.warning("backend=auto: could not cache the choice in %s (%s)", path, err)
    log.info(
        "backend=auto: %s for %s (timed now, %d px, batch %d: %s; cached in %s)",
        best,
        source,
        size,
        TIMING_BATCH,
        describe_rates(rates, precisions),
        path,
    )
    return built[best]
