"""Linear softmax heads on the backbone's pooled features, and their surgery onto an exported graph.

A head reads one or more poolings (`embedding`, the last feature map's cat-weighted pooling the
graph already outputs; `pooled`, its global average pool, which the ImageNet classifier reads;
`stage5`, the global average pool of stage 5's output; `stage5_cat`, stage 5's output pooled with
`embedding`'s weights over the places), each raised to a signed power (the square root, or the
head's `power`: mood reads its features at 0.75) and L2-normalised, concatenated, then
`softmax(x @ weights + bias)`.

The heads are appended to the already exported and quantized graphs as new outputs, after the
tensors they read: every node that computes `probabilities` stays as it is, so the cat
probabilities stay bit for bit what they were, and one inference gives everything. In the int8
file the weights are stored as int8 per class (symmetric, scale = max |w| / 127), turned into
float by Cast and Mul, which onnxruntime folds into a float constant at load: the arithmetic
stays float32, and 2,560 x 20 weights cost 51 kB instead of 205 kB (the file must stay under
4 MB). Not DequantizeLinear: onnxruntime fuses DequantizeLinear + Gemm/MatMul into MatMulNBits,
which also rounds the features to 8 bits (probabilities off by up to 0.008 against the float
weights it stands for; with Cast and Mul, 1e-7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EPSILON = 1e-12  # below any real feature vector's norm; keeps an all-zero one finite
ROOT = 0.5  # the power the features are raised to unless a head says otherwise: the signed square root


@dataclass(frozen=True)
class Head:
    """softmax(normalised(features of `reads`, `power`) @ weights + bias) over `labels`, output as `output`."""

    output: str
    labels: tuple[str, ...]
    reads: tuple[str, ...]
    weights: np.ndarray  # (D, K)
    bias: np.ndarray  # (K,)
    power: float = ROOT

    def probabilities(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """The reference in numpy (float64) of what the appended graph computes."""
        logits = normalised([features[name] for name in self.reads], self.power) @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def to_json(self) -> dict:
        return {"output": self.output, "labels": list(self.labels), "reads": list(self.reads), "power": self.power,
                "weights": self.weights.tolist(), "bias": self.bias.tolist()}


def normalised(blocks: list[np.ndarray], power: float = ROOT) -> np.ndarray:
    """Each block raised to the signed `power` and L2-normalised per row, the blocks side by side (float64)."""
    parts = []
    for block in blocks:
        rooted = np.sign(block) * np.abs(np.asarray(block, np.float64)) ** power
        parts.append(rooted / np.maximum(np.linalg.norm(rooted, axis=1, keepdims=True), EPSILON))
    return np.concatenate(parts, axis=1)


def int8_weights(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per class (column): (integers (D, K), scales (K,))."""
    peak = np.abs(weights).max(axis=0)
    scale = np.where(peak > 0, peak / 127, 1.0).astype(np.float32)
    return np.clip(np.round(weights / scale), -127, 127).astype(np.int8), scale


def stored_weights(head: Head, int8: bool) -> np.ndarray:
    """The float weights the graph computes with: the int8 ones dequantized, or the float32 ones."""
    if not int8:
        return head.weights.astype(np.float32)
    integers, scale = int8_weights(head.weights)
    return integers.astype(np.float32) * scale


def append(model: onnx.ModelProto, heads: list[Head], int8: bool) -> onnx.ModelProto:
    """A copy of `model` with each head as an extra float32 (N, K) output. The poolings read are found by
    name: `embedding` (an output), `pooled` (the flattened global average pool), and `stage5` and
    `stage5_cat` (stage 5's output, pooled by nodes appended here)."""
    from training.attributes import add_poolings

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    existing = {output.name for output in graph.output}
    nodes: list[onnx.NodeProto] = []
    sources = add_poolings(graph, nodes)
    constants: list[onnx.TensorProto] = [numpy_helper.from_array(np.array(EPSILON, np.float32), "heads/epsilon")]
    normal: dict[tuple[str, float], str] = {}  # one normalisation per pooling and power, shared by the heads
    for head in heads:
        if head.output in existing:
            raise ValueError(f"the model already has an output named {head.output}")
        for name in head.reads:
            if (name, head.power) not in normal:
                normal[name, head.power] = _normalise(nodes, constants, sources[name], name, head.power)
        prefix = f"heads/{head.output}"
        features = normal[head.reads[0], head.power]
        if len(head.reads) > 1:
            features = f"{prefix}/features"
            nodes.append(helper.make_node("Concat", [normal[name, head.power] for name in head.reads], [features], axis=1,
                                          name=features))
        weights = f"{prefix}/weights"
        if int8:
            integers, scale = int8_weights(head.weights)
            constants += [numpy_helper.from_array(integers, weights + "_int8"),
                          numpy_helper.from_array(scale[None, :], weights + "_scale")]
            nodes += [helper.make_node("Cast", [weights + "_int8"], [weights + "_float"], to=TensorProto.FLOAT,
                                       name=weights + "_float"),
                      helper.make_node("Mul", [weights + "_float", weights + "_scale"], [weights], name=weights)]
        else:
            constants.append(numpy_helper.from_array(head.weights.astype(np.float32), weights))
        constants.append(numpy_helper.from_array(head.bias.astype(np.float32), f"{prefix}/bias"))
        nodes += [helper.make_node("Gemm", [features, weights, f"{prefix}/bias"], [f"{prefix}/logits"],
                                   name=f"{prefix}/Gemm"),
                  helper.make_node("Softmax", [f"{prefix}/logits"], [head.output], axis=1, name=f"{prefix}/Softmax")]
        graph.output.append(helper.make_tensor_value_info(head.output, TensorProto.FLOAT, ["batch", len(head.labels)]))
    graph.initializer.extend(constants)
    graph.node.extend(nodes)
    drop_unused(graph)  # stage 5's pools where no head reads them
    onnx.checker.check_model(result, full_check=True)
    return result


def _normalise(nodes: list[onnx.NodeProto], constants: list[onnx.TensorProto], source: str, pooling: str,
               power: float) -> str:
    """Nodes for sign(x) |x|^power / max(||.||2, EPSILON) per row (the square root as Sqrt, named
    heads/<pooling>/...; another power as Pow, heads/<pooling>^<power>/...); returns the result's name."""
    prefix = f"heads/{pooling}"
    raised: tuple[str, list[str], str] = ("Sqrt", [f"{prefix}/abs"], "sqrt")
    if power != ROOT:
        prefix += f"^{power:g}"
        constants.append(numpy_helper.from_array(np.array(power, np.float32), f"{prefix}/power"))
        raised = ("Pow", [f"{prefix}/abs", f"{prefix}/power"], "raised")
    steps = [("Abs", [source], "abs"), raised, ("Sign", [source], "sign"),
             ("Mul", [f"{prefix}/sign", f"{prefix}/{raised[2]}"], "rooted")]
    for op, inputs, name in steps:
        nodes.append(helper.make_node(op, inputs, [f"{prefix}/{name}"], name=f"{prefix}/{name}"))
    nodes += [helper.make_node("ReduceL2", [f"{prefix}/rooted"], [f"{prefix}/norm"], axes=[1], keepdims=1,
                               name=f"{prefix}/norm"),
              helper.make_node("Max", [f"{prefix}/norm", "heads/epsilon"], [f"{prefix}/floor"], name=f"{prefix}/floor"),
              helper.make_node("Div", [f"{prefix}/rooted", f"{prefix}/floor"], [f"{prefix}/normalised"],
                               name=f"{prefix}/normalised")]
    return f"{prefix}/normalised"


def drop_unused(graph: onnx.GraphProto) -> None:
    """Remove the nodes, constants and shape annotations nothing leads from any more."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):  # the graph is topologically sorted
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    for field in (graph.initializer, graph.value_info):
        unused = [entry for entry in field if entry.name not in needed]
        for entry in unused:
            field.remove(entry)
