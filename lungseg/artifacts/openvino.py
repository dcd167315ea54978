"""The OpenVINO format: models read from an ONNX file or an IR (``.xml`` + ``.bin``), lungseg's
metadata (the description and card) in an IR's ``rt_info`` (section ``lungseg``; OpenVINO reads an
ONNX file's ``metadata_props`` into section ``framework``), and a trained model converted through
the ONNX graph that ``lungseg.export format=onnx`` writes (so both runtimes run one graph), kept in
memory or saved as an IR. Importing it needs neither torch nor openvino; reading and converting need
the ``openvino`` extra (converting: torch too)."""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungseg.errors import CheckpointError, require_extra

if TYPE_CHECKING:
    from lungseg.artifacts.checkpoint import TrainedModel

log = logging.getLogger(__name__)

SECTION = "lungseg"  # the rt_info section an exported IR keeps lungseg's metadata in
ONNX_SECTION = "framework"  # where OpenVINO puts an ONNX file's metadata_props
METADATA_KEYS = (
    "image_size",
    "size_divisor",
    "source_checkpoint",
    "lungseg_description",
    "model_card",
    "quantization",
    "calibration_source",
)
SUFFIXES = (".onnx", ".xml")


def openvino() -> Any:
    """The ``openvino`` package, or the one-line missing-extra error."""
    return require_extra("openvino", "openvino", "Running models with OpenVINO")


@functools.cache
def core() -> Any:
    """The process's one ``openvino.Core``: models read by it and compiled by it never outlive it
    (a Core made per call and dropped while its model lives on can leave the model pointing into
    freed memory)."""
    return openvino().Core()


def read_model(path: str | Path) -> Any:
    """An ``openvino.Model`` from an ONNX file or an IR ``.xml`` (its ``.bin`` beside it)."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise CheckpointError(
            f"{path}: OpenVINO reads lungseg models as .onnx or .xml (+ .bin) "
            "files; export one with python -m lungseg.export format=openvino"
        )
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such model file; pass model_path=<file.xml or file.onnx> written by "
            "lungseg.export"
        )
    if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
        raise CheckpointError(
            f"{path}: its weights {path.with_suffix('.bin').name} are missing "
            "beside it; copy the .xml and .bin together, or export again"
        )
    try:
        return core().read_model(str(path))
    except RuntimeError as err:
        reason = (str(err).strip().splitlines() or ["unreadable"])[0]
        raise CheckpointError(
            f"{path}: not a readable model ({reason}); export it again with python -m "
            "lungseg.export format=openvino"
        ) from None


def read_metadata(model: Any) -> dict[str, str]:
    """lungseg's metadata of a model: an IR's rt_info section ``lungseg``, else an ONNX file's."""
    for section in (SECTION, ONNX_SECTION):
        found = {
            key: model.get_rt_info([section, key]).astype(str)
            for key in METADATA_KEYS
            if model.has_rt_info([section, key])
        }
        if found:
            return found
    return {}


def write_metadata(model: Any, metadata: dict[str, str]) -> None:
    """Keep ``metadata`` in the model's rt_info section ``lungseg`` (saved with the IR)."""
    for key, value in metadata.items():
        model.set_rt_info(str(value), [SECTION, key])


def is_int8(model: Any) -> bool:
    """Whether the model holds quantised operations (NNCF's FakeQuantize, or QDQ pairs)."""
    return any(
        op.get_type_name() in ("FakeQuantize", "QuantizeLinear", "DequantizeLinear")
        for op in model.get_ops()
    )


def to_openvino(
    model: TrainedModel, metadata: dict[str, str], opset: int = 17, dynamic_size: bool = True
) -> Any:
    """``model`` with its sigmoid as an ``openvino.Model`` (dynamic batch, and H and W unless
    ``dynamic_size`` is false), ``metadata`` in its rt_info."""
    from lungseg.artifacts.exports import ProbabilityModel, export_onnx

    size = model.description.image_size
    with tempfile.TemporaryDirectory(prefix="lungseg-openvino-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(ProbabilityModel(model.net), path, size, opset, dynamic_size, metadata)
        converted = core().read_model(str(path))  # weights are read into memory: the file may go
    write_metadata(converted, {"image_size": str(size), **metadata})
    return converted


def convert_source(source: str | Path, image_size: int | None = None) -> Any:
    """A checkpoint, pretrained folder or Hub id as an in-memory OpenVINO model."""
    from lungseg.artifacts.checkpoint import load_checkpoint
    from lungseg.artifacts.exports import export_metadata
    from lungseg.artifacts.model_card import model_card
    from lungseg.artifacts.pretrained import load_pretrained

    path = Path(str(source)).expanduser()
    if path.is_file() or path.suffix.lower() == ".ckpt":
        model = load_checkpoint(path, image_size)
    else:
        model = load_pretrained(source)
    log.info(
        "converting %s for OpenVINO in memory (through its ONNX graph); export it once with "
        "python -m lungseg.export format=openvino to skip this",
        source,
    )
    return to_openvino(model, export_metadata(model, path.name, model_card(model.description)))


def save_ir(model: Any, path: Path) -> None:
    """Write ``model`` as an IR: ``path`` (.xml) and its .bin beside it, the weights in fp32 as
    trained."""
    openvino().save_model(model, str(path), compress_to_fp16=False)
