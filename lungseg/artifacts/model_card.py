"""The model card (README.md) that travels with every exported model: data, recipe, metrics, input
contract, intended use and limits, written from the model's description alone."""

from __future__ import annotations

import re
from typing import Any

from lungseg.artifacts.description import ModelDescription
from lungseg.markdown import table

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_SHA256_LABEL = f"{WEIGHTS_FILE} SHA-256"  # the Provenance row lungseg-model install checks
_WEIGHTS_SHA256_ROW = re.compile(
    rf"^\| {re.escape(WEIGHTS_SHA256_LABEL)} \| `([0-9a-f]{{64}})` \|$", re.M
)

INTENDED_USE = (
    "Research and engineering use: segmenting the lung fields of frontal chest radiographs to "
    "measure them, to "
    "crop or mask them for other models, or to study segmentation. **Not a medical device**: it "
    "is not cleared or "
    "approved for diagnosis or treatment decisions, and its masks must not be used for patient "
    "care without "
    "review by a qualified person."
)
LIMITS = (
    "Trained on the data described below only; films from other scanners, hospitals, "
    "post-processing chains, "
    "paediatric or lateral views, or with dense consolidation, devices or unusual positioning may "
    "give wrong "
    "masks without warning. Check `needs_review` in `predictions.csv` (the `quality_score`, an "
    "estimate of the "
    "mask's Dice, below the operating point chosen on val) and `plausibility` (implausible lung "
    "fraction or component "
    "count), and look at the overlays. Metrics below are on the named splits only and do not "
    "transfer automatically."
)
USAGE = """```python
from lungseg import LungSegmenter

seg = LungSegmenter.from_pretrained("<this folder or Hub id>")
mask = seg.predict("chest.png")   # bool (H, W) at the image's own size
```"""
RECIPE_KEYS = (
    ("model", ("base_filters", "depth", "dropout", "noise_std", "decoder", "deep_supervision")),
    ("loss", ("_target_",)),
    ("optimizer", ("_target_", "lr")),
    ("scheduler", ("_target_",)),
    ("data", ("image_size", "batch_size", "train_subset")),
    ("trainer", ("max_epochs", "precision")),
)


def _metrics(title: str, values: dict[str, float]) -> list[str]:
    if not values:
        return []
    return [
        f"### {title}",
        table([("metric", "value"), *[(k, f"{v:.4f}") for k, v in sorted(values.items())]]),
    ]


def recipe_rows(config: dict[str, Any]) -> list[tuple[str, str]]:
    """The main training settings of a run config, as (key, value) rows."""
    rows = [("seed", str(config.get("seed", "-")))]
    for group, keys in RECIPE_KEYS:
        node = config.get(group) or {}
        rows += [
            (f"{group}.{k}", str(node[k])) for k in keys if isinstance(node, dict) and k in node
        ]
    augment = (config.get("data") or {}).get("train_transform")
    if isinstance(augment, dict):
        names = [t.get("_target_", "?").rsplit(".", 1)[-1] for t in augment.get("transforms", [])]
        rows.append(("augmentation", ", ".join(names) or augment.get("_target_", "-")))
    return rows


def model_card(description: ModelDescription, weights_sha256: str | None = None) -> str:
    """README.md of an exported lungseg model; ``weights_sha256``: the SHA-256 of a pretrained
    folder's model.safetensors, recorded in the Provenance table (written after the weights, so it
    names them)."""
    d, data = description, description.data
    counts = ", ".join(f"{split} {n}" for split, n in (data.get("counts") or {}).items())
    experiment = d.config.get("task_name", "lungseg") if d.config else "lungseg"
    parts = [
        "---\nlibrary_name: lungseg\npipeline_tag: image-segmentation\ntags:\n- "
        "image-segmentation\n"
        "- chest-x-ray\n- lung\n---",
        f"# Lung segmentation U-Net ({experiment})",
        "A lungseg U-Net that turns a frontal chest radiograph into a binary lung mask.",
        USAGE,
        "## Intended use",
        INTENDED_USE,
        "## Limits",
        LIMITS,
        "## Input contract",
        table(
            [
                ("field", "value"),
                ("input size", f"{d.image_size} x {d.image_size}"),
                ("threshold", f"{d.threshold}"),
                ("training precision", d.precision),
                *[(f"preprocessing: {k}", v) for k, v in d.preprocessing.items()],
            ]
        ),
        "## Training data",
        table(
            [
                ("field", "value"),
                ("root folder", data.get("root_name", "-")),
                ("pairs per split", counts or "-"),
                ("train subset", str(data.get("train_subset") or "all")),
                ("file list SHA-256", f"`{data.get('files_sha256', '-')}`"),
            ]
        ),
    ]
    if data.get("attribution"):
        attribution = "\n".join(
            ("##" + line) if line.startswith("#") else line
            for line in str(data["attribution"]).splitlines()
        )
        parts += [
            "### Data attribution and licence (from the data's ATTRIBUTION file)",
            attribution,
        ]
    parts += [
        "## Recipe",
        table([("setting", "value"), *recipe_rows(d.config)]) if d.config else "-",
        "## Metrics",
    ]
    metrics = (
        _metrics("Validation (this checkpoint)", d.val_metrics)
        + _metrics("Best over the run", d.best_metrics)
        + _metrics("Test", d.test_metrics)
    )
    parts += metrics or ["No metrics were recorded with this model."]
    parts += [
        "## Provenance",
        table(
            [
                ("field", "value"),
                ("lungseg version", d.lungseg_version),
                ("git commit", d.git_commit or "unknown"),
                ("checkpoint written", d.created or "-"),
                *([(WEIGHTS_SHA256_LABEL, f"`{weights_sha256}`")] if weights_sha256 else []),
            ]
        ),
    ]
    return "\n\n".join(parts) + "\n"


def recorded_weights_sha256(card: str) -> str | None:
    """The weights' SHA-256 a model card records (the last Provenance row of its kind), or None."""
    found = _WEIGHTS_SHA256_ROW.findall(card)
    return found[-1] if found else None
