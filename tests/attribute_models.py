"""Models with and without the breed and mood heads, made from the shipped one, for the tests and the benchmark.

`with_heads` appends two MatMul+Softmax heads (fixed random weights) after the `embedding` output, so
the runtime can be tested on a model that has them whatever the shipped model is; `without_heads`
takes them out again (outputs and card section), as an older model or a user's own would be.
Needs the onnx package (the train extra)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

BREEDS = ("Abyssinian", "Bengal", "Birman", "Bombay", "British Shorthair", "Egyptian Mau", "Maine Coon", "Persian",
          "Ragdoll", "Russian Blue", "Siamese", "Sphynx", "domestic")
MOODS = ("angry", "disgusted", "happy", "normal", "sad", "scared", "surprised")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_card(model: Path, card: dict) -> None:
    card = {**card, "file": model.name, "sha256": _sha256(model), "size_bytes": model.stat().st_size}
    model.with_suffix(".json").write_text(json.dumps(card, indent=2), encoding="utf-8")


def with_heads(source: Path, model: Path, confident: float = 0.5, seed: int = 26, scale: float = 4.0) -> Path:
    """`source` (a model with an `embedding` output) with `breeds` and `mood` heads, written to `model`
    with its card (the card's `attributes`, `confident` as given). `scale` sets how peaked the softmaxes are."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = onnx.load(str(source))
    width = next(output for output in graph.graph.output if output.name == "embedding").type.tensor_type.shape.dim[1].dim_value
    random = np.random.default_rng(seed)
    for name, labels in (("breeds", BREEDS), ("mood", MOODS)):
        weights = (random.standard_normal((width, len(labels))) * scale).astype(np.float32)
        graph.graph.initializer.append(numpy_helper.from_array(weights, f"{name}_head_weights"))
        graph.graph.node.extend([
            helper.make_node("LpNormalization", ["embedding"], [f"{name}_head_unit"], axis=1, p=2),
            helper.make_node("MatMul", [f"{name}_head_unit", f"{name}_head_weights"], [f"{name}_head_logits"]),
            helper.make_node("Softmax", [f"{name}_head_logits"], [name], axis=1),
        ])
        graph.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", len(labels)]))
    model.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(model))
    card = json.loads(source.with_suffix(".json").read_text(encoding="utf-8"))
    card["attributes"] = {
        "breeds": {"output": "breeds", "labels": list(BREEDS), "confident": confident, "metrics": {}},
        "mood": {"output": "mood", "labels": list(MOODS), "metrics": {}},
    }
    _write_card(model, card)
    return model


def without_heads(source: Path, model: Path) -> Path:
    """`source` without the `breeds` and `mood` outputs (and the nodes only they used) and its card without
    `attributes`: what a model from before the heads looks like to the runtime. The graph surgery is the
    training package's own (`training.attributes_fit.without_heads`, which a refit of the heads uses)."""
    import onnx

    from training.attributes_fit import without_heads as strip

    model.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(strip(onnx.load(str(source))), str(model))
    card = json.loads(source.with_suffix(".json").read_text(encoding="utf-8"))
    card.pop("attributes", None)
    _write_card(model, card)
    return model
