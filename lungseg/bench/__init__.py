"""Benchmark the real model and data pipeline: ``python -m lungseg.bench [device=cuda] [--json
out.json]``.

``mode=speed`` (default, ``bench/speed.py``), at one size: matmul peak per dtype, training step,
inference, data pipeline, onnxruntime inference (fp32 and static INT8 of the same network),
end-to-end ``Trainer.fit``. Each timing has warm-up and reports the median; FLOP/s come from torch's
FLOP counter and are compared with the matmul peak of the same dtype measured in the same run.

``mode=backends`` (``bench/backends.py``): inference only, every backend and precision on this host
timed side by side, interleaved.

``mode=cohort`` (``bench/cohort.py``): a cohort of DICOM films through ``lungseg.predict`` end to
end (SEG and CSV written) against the model-only rate of the same backend.

``mode=scale`` (``bench/scale.py``), as the dataset grows (``scale.sizes``): synthetic sets in the
Kaggle layout through the real data module (setup with its decode into the cache, DataLoader epochs
with the configured workers), the memory of the process and its workers, and training steps; then
one epoch of the Kaggle set projected from them.
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from lungseg.atomic import write_text
from lungseg.config import CONFIG_DIR, command_line
from lungseg.errors import LungsegError, exit_on_user_error

MODES = {
    "speed": "the model and pipeline at one size",
    "scale": "data, memory and training as the set grows",
    "backends": "inference by every backend and precision, side by side",
    "cohort": "DICOM films through lungseg.predict end to end against the model alone",
}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Print the benchmark table; write it as JSON when ``json=PATH`` (or ``--json PATH``) is
    given."""
    if cfg.mode not in MODES:
        raise LungsegError(
            f"mode={cfg.mode}: choose {', '.join(f'{m} ({what})' for m, what in MODES.items())}"
        )
    if cfg.mode == "scale":
        from lungseg.bench.scale import run_scale, scale_report

        result = run_scale(cfg)
        text = scale_report(result)
    elif cfg.mode == "cohort":
        from lungseg.bench.cohort import cohort_report, run_cohort

        result = run_cohort(cfg)
        text = cohort_report(result)
    elif cfg.mode == "backends":
        from lungseg.bench.backends import backends_report, run_backends

        result = run_backends(cfg)
        text = backends_report(result)
    else:
        from lungseg.bench.speed import run_speed, speed_report

        result = run_speed(cfg)
        text = speed_report(result)
    print(text)
    if cfg.get("json"):
        write_text(cfg.json, json.dumps(result, indent=2))
        print(f"wrote {cfg.json}")


def _json_flag_to_override(argv: list[str]) -> list[str]:
    """Accept ``--json PATH`` as well as Hydra's ``json=PATH``."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--json" and i + 1 < len(argv):
            out.append(f"json={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _main_with_json_flag() -> None:
    """``main`` with ``--json PATH`` accepted."""
    sys.argv = [sys.argv[0], *_json_flag_to_override(sys.argv[1:])]
    main()


cli = command_line(_main_with_json_flag)
