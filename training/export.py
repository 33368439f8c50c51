"""ONNX export (opset 17, free batch and image size) and static int8 QDQ quantization for CPUs without VNNI.

The image's height and width are free as well as the batch: the network is convolutions and a
global pool, so any size runs, and the CLI classifies a camera's EXIF thumbnail at a smaller
size than the photo itself (the card's `thumbnail.size`, see training/thumbnails.py).

On AVX2 without VNNI, onnxruntime multiplies u8 activations by s8 weights with an instruction
that saturates 16-bit pair sums, so the weights of the GEMM-based convolutions are quantized to
7 bits (`reduce_range`). Depthwise convolutions have their own kernel, which accumulates in 32
bits: their weights keep all 8 bits, which is where per-channel quantization hurts most (9 or 25
weights per channel). Measured on the validation split: 47 int8/fp32 label disagreements with
7-bit weights everywhere, 29 with 8-bit depthwise weights, 23 with percentile calibration on top
(8-bit weights everywhere: 89, the saturation).

The input needs no float arithmetic at all: the graph normalises pixels as (x - 128) / 128, so
with the input's quantization fixed at scale 1/128 and zero point 128 the quantized input *is*
the pixel value. The float Cast/Sub/Div/QuantizeLinear chain is cut out and the first
DequantizeLinear reads the uint8 pixels: no rounding of the input at all (a calibrated scale
merged neighbouring grey levels), and a little less inference time (7.3 -> 7.2 ms per image).

Rounding weights and activations also shifts the mean of every convolution's output a little,
and through 49 layers the shifts add up. Bias correction (Nagel et al. 2019, "Data-Free
Quantization", sec. 4.2) subtracts them from the int32 biases: first the shift from rounding
the weights, (W_q - W) . E[input], then, conv by conv in graph order, half of what is still
left of the mean output error against the float model on the calibration images (which also
catches rounding and clipping of activations upstream). Measured on the validation split of the
shipped checkpoint: 26 int8/fp32 label disagreements without, 19 with the first step, 16 with
both (mean |p_int8 - p_fp32| 0.0134 -> 0.0109).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from training import runtime
from training.heads import drop_unused
from training.model import PIXEL_STEP, PIXEL_ZERO

OPSET = 17
CALIBRATION_IMAGES = 256
SMALL_WEIGHTS = 4096  # head matrices smaller than this stay float32
CALIBRATION_PERCENTILE = 99.999
BIAS_CORRECTION_DAMPING = 0.5  # of the remaining output error, which is estimated from a few hundred images
QUANTIZATION = {
    "method": "onnxruntime.quantization.quantize_static after quant_pre_process",
    "format": "QDQ",
    "per_channel": True,
    "reduce_range": "7-bit weights, except depthwise convolutions (8-bit; no saturation there)",
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "calibrate_method": f"Percentile ({CALIBRATION_PERCENTILE})",
    "excluded": "everything after the backbone's last feature map runs in float32: the head after the global "
                "pool (the ImageNet logits it reads feed log-sum-exps, which 8-bit activations would blur; its "
                "weights are stored as int8 per channel and dequantized once at load) and the embedding's "
                "pooling over the cat",
    "input": "the uint8 pixels themselves (scale 1/128, zero point 128); no float normalisation",
    "bias_correction": "weight rounding (W_q - W).E[x], then sequential empirical per conv output "
                       f"(damping {BIAS_CORRECTION_DAMPING}), on the calibration images",
}


def export_onnx(wrapper: nn.Module, path: Path, size: int, outputs: tuple[str, ...]) -> Path:
    """TorchScript exporter (dynamo=False): a compact, plain graph that quantizes cleanly. `wrapper`
    takes uint8 NHWC pixels (see training.model.Shipped) of any batch and size (traced at `size`)
    and returns `outputs`, one row per image."""
    dummy = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapper.eval(), (dummy,), str(path), dynamo=False, opset_version=OPSET,
        input_names=["image"], output_names=list(outputs),
        dynamic_axes={"image": {0: "batch", 1: "height", 2: "width"}, **{name: {0: "batch"} for name in outputs}},
    )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return path


class _Calibration:
    """onnxruntime CalibrationDataReader over a uint8 batch, a few images per call."""

    def __init__(self, images: np.ndarray, batch: int = 16) -> None:
        self._batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"image": batch}


def quantize(fp32: Path, out: Path, calibration_images: np.ndarray, work: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    CalibrationDataReader.register(_Calibration)
    prepared = work / (fp32.stem + "-prep.onnx")
    quant_pre_process(str(fp32), str(prepared))
    fp32_model = onnx.load(str(prepared))
    nodes = fp32_model.graph.node
    head = _downstream(fp32_model.graph, next(n for n in nodes if n.op_type == "GlobalAveragePool").input[0])
    depthwise_weights = [n.input[1] for n in nodes if n.op_type == "Conv" and _groups(n) > 1]
    normalised = next(n for n in nodes if n.op_type == "Conv").input[0]  # what the stem reads
    pixels_as_quantized = {"scale": np.array(1 / PIXEL_STEP, np.float32),
                           "zero_point": np.array(PIXEL_ZERO, np.uint8)}
    quantized = work / (fp32.stem + "-qdq.onnx")  # as onnxruntime wrote it: kept for comparison
    quantize_static(
        str(prepared), str(quantized), _Calibration(calibration_images),
        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_exclude=[node.name for node in head], calibrate_method=CalibrationMethod.Percentile,
        extra_options={
            "CalibPercentile": CALIBRATION_PERCENTILE,
            "TensorQuantOverrides": {
                normalised: [pixels_as_quantized],
                **{name: [{"axis": 0, "reduce_range": False}] for name in depthwise_weights},
            },
        },
    )
    model = onnx.load(str(quantized))
    correct_biases(fp32_model, model, calibration_images)
    model = _read_pixels_directly(model, normalised)
    _store_weights_as_int8(model, {node.name for node in head})
    onnx.checker.check_model(model, full_check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def _downstream(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    """Every node that reads, directly or not, `tensor` (for the last feature map: the float head,
    the global pool and the cat pooling of the embedding)."""
    reached, tensors = [], {tensor}
    for node in graph.node:  # topologically sorted
        if tensors & set(node.input):
            reached.append(node)
            tensors.update(node.output)
    return reached


def _store_weights_as_int8(model: onnx.ModelProto, names: set[str]) -> None:
    """Weight-only int8 for the float head: each Gemm/MatMul weight becomes int8 per output channel plus
    a DequantizeLinear, which onnxruntime folds into a float constant once, when it loads the model."""
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    added = []
    for node in graph.node:
        if node.name not in names or node.op_type not in ("Gemm", "MatMul") or node.input[1] not in constants:
            continue
        if np.prod(constants[node.input[1]].dims) < SMALL_WEIGHTS:  # the 17 -> 2 head itself: not worth a byte
            continue
        weights = onnx.numpy_helper.to_array(constants[node.input[1]]).astype(np.float64)
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        axis = 0 if transposed else 1
        peak = np.abs(weights).max(axis=1 - axis)
        scale = np.where(peak > 0, peak / 127, 1.0).astype(np.float32)
        shape = (-1, 1) if axis == 0 else (1, -1)
        integers = np.clip(np.round(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
        stem = node.input[1]
        graph.initializer.remove(constants[stem])
        graph.initializer.extend([onnx.numpy_helper.from_array(integers, stem + "_int8"),
                                  onnx.numpy_helper.from_array(scale, stem + "_scale"),
                                  onnx.numpy_helper.from_array(np.zeros(len(scale), np.int8), stem + "_zero")])
        added.append(onnx.helper.make_node("DequantizeLinear", [stem + "_int8", stem + "_scale", stem + "_zero"],
                                           [stem], name=stem + "_dequantize", axis=axis))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(added + nodes)


def _groups(conv: onnx.NodeProto) -> int:
    """A Conv's group count: more than 1 for the depthwise convolutions."""
    return next((a.i for a in conv.attribute if a.name == "group"), 1)


def _producer(graph: onnx.GraphProto, tensor: str) -> onnx.NodeProto:
    return next(node for node in graph.node if tensor in node.output)


def _read_pixels_directly(model: onnx.ModelProto, normalised: str) -> onnx.ModelProto:
    """Cut out the float normalisation: QuantizeLinear((x - 128) / 128, 1/128, 128) is x itself,
    so whatever read the quantized input reads the uint8 pixels (the input Cast's source) instead."""
    graph = model.graph
    quantized = next(node for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] == normalised)
    scale, zero_point = (onnx.numpy_helper.to_array(_initializer(graph, name)).item() for name in quantized.input[1:3])
    if not (np.isclose(scale, 1 / PIXEL_STEP, rtol=0, atol=1e-9) and zero_point == PIXEL_ZERO):
        raise ValueError(f"input quantized with scale {scale} and zero point {zero_point}, not the pixels")
    node = _producer(graph, normalised)
    while node.op_type != "Cast":  # back along the normalisation: Div, Sub, then the Cast to float
        node = _producer(graph, node.input[0])
    pixels = node.input[0]
    for consumer in graph.node:
        consumer.input[:] = [pixels if name == quantized.output[0] else name for name in consumer.input]
    drop_unused(graph)
    return model


def channel_means(model: onnx.ModelProto, tensors: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Mean of each channel of NCHW `tensors` over `images` (and all positions)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {output.name for output in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in tensors if name not in known)
    session = runtime.session(probe.SerializeToString())
    sums: dict[str, np.ndarray] = {name: np.zeros(0) for name in tensors}
    for start in range(0, len(images), 32):
        for name, value in zip(tensors, session.run(tensors, {"image": images[start:start + 32]}), strict=True):
            part = value.astype(np.float64).mean(axis=(2, 3)).sum(axis=0)
            sums[name] = part if sums[name].size == 0 else sums[name] + part
    return {name: total / len(images) for name, total in sums.items()}


def _initializer(graph: onnx.GraphProto, name: str) -> onnx.TensorProto:
    return next(init for init in graph.initializer if init.name == name)


def _dequantized(graph: onnx.GraphProto, tensor: str) -> tuple[onnx.TensorProto, np.ndarray, np.ndarray]:
    """For a DequantizeLinear'd constant: its integer initializer, those integers, and the scale."""
    dequantize = _producer(graph, tensor)
    integers = _initializer(graph, dequantize.input[0])
    scale = onnx.numpy_helper.to_array(_initializer(graph, dequantize.input[1]))
    return integers, onnx.numpy_helper.to_array(integers), scale


def _shift_bias(graph: onnx.GraphProto, conv: onnx.NodeProto, shift: np.ndarray) -> None:
    """Subtract `shift` (per output channel) from a quantized conv's int32 bias."""
    integers, values, scale = _dequantized(graph, conv.input[2])
    corrected = values - np.round(shift / scale).astype(np.int64)
    integers.CopyFrom(onnx.numpy_helper.from_array(corrected.astype(np.int32), integers.name))


def correct_biases(fp32: onnx.ModelProto, quantized: onnx.ModelProto, images: np.ndarray) -> None:
    """Bias correction of `quantized` (QDQ, as onnxruntime wrote it) against `fp32`, in place."""
    produced = {output for node in quantized.graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    convs = {node.name: node for node in quantized.graph.node if node.op_type == "Conv" and node.input[1] in produced}
    float_convs = [node for node in fp32.graph.node if node.op_type == "Conv" and node.name in convs]
    inputs = channel_means(fp32, sorted({conv.input[0] for conv in float_convs}), images)
    for conv in float_convs:  # the shift from rounding the weights
        weights = onnx.numpy_helper.to_array(_initializer(fp32.graph, conv.input[1]))
        _, integers, scale = _dequantized(quantized.graph, convs[conv.name].input[1])
        error = (integers * scale.reshape(-1, 1, 1, 1) - weights).sum(axis=(2, 3))  # (out, in per group)
        out_channels, in_per_group = error.shape
        source = ((np.arange(out_channels)[:, None] // (out_channels // _groups(conv))) * in_per_group
                  + np.arange(in_per_group))
        _shift_bias(quantized.graph, convs[conv.name], (error * inputs[conv.input[0]][source]).sum(axis=1))
    targets = channel_means(fp32, [conv.output[0] for conv in float_convs], images)
    for conv in float_convs:  # what is left, in graph order: each step sees the corrected layers before it
        output = convs[conv.name].output[0]
        error = channel_means(quantized, [output], images)[output] - targets[conv.output[0]]
        _shift_bias(quantized.graph, convs[conv.name], BIAS_CORRECTION_DAMPING * error)
