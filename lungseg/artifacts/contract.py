"""The input contract every exported model carries: one float input ``image`` (N, 1, H, W), the
radiograph preprocessed as its description says, and one output ``probability`` of the same shape;
the description travels in the file's metadata. Torch-free, so runtimes without torch (ONNX Runtime,
OpenVINO) read it too."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from lungseg.artifacts.description import ModelDescription
from lungseg.errors import CheckpointError

INPUT_NAME, OUTPUT_NAME = "image", "probability"
DESCRIPTION_FIELD = "lungseg_description"  # metadata key of the description (JSON)


def read_description(metadata: Mapping[str, str], path: Path) -> ModelDescription:
    """The description an export wrote into its metadata (older exports: their ``image_size``
    alone)."""
    if DESCRIPTION_FIELD in metadata:
        return ModelDescription.from_dict(json.loads(metadata[DESCRIPTION_FIELD]))
    if "image_size" in metadata:
        return ModelDescription(image_size=int(metadata["image_size"]))
    raise CheckpointError(
        f"{path}: an exported model without lungseg's metadata (no image_size); export it with "
        "python -m lungseg.export ckpt_path=best.ckpt format=onnx"
    )


def signature_problem(inputs: list[tuple[str, str, list]], outputs: list[str]) -> str | None:
    """What keeps a model with these inputs ((name, element type, shape)) and output names from
    being a lungseg model, or None when it takes lungseg's input."""
    if (
        len(inputs) == 1
        and inputs[0][0] == INPUT_NAME
        and inputs[0][1] in ("float", "float32", "f32", "tensor(float)")
        and len(inputs[0][2]) == 4
        and inputs[0][2][1] == 1
        and OUTPUT_NAME in outputs
    ):
        return None
    found = ", ".join(f"{name} {kind} {shape}" for name, kind, shape in inputs)
    return (
        f"this model does not take lungseg's input (it has {found}; lungseg models take "
        f"{INPUT_NAME} float "
        f"(N, 1, H, W) and give {OUTPUT_NAME}); export one with python -m lungseg.export"
    )
