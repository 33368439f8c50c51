"""The onnxruntime session of training's own passes over the pool (the CLI's is notcat_sort.model.Classifier)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def session(model: Path | bytes, threads: int = 2):
    """A CPU session on `threads` cores, errors only in the log (graph-optimizer notes mean nothing here)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def run(model: Path, images: np.ndarray, outputs: tuple[str, ...], batch: int = 64) -> dict[str, np.ndarray]:
    """The named outputs of an ONNX model over a (N, S, S, 3) uint8 array (memory-mapped is fine)."""
    net = session(model)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for start in range(0, len(images), batch):
        for name, value in zip(outputs, net.run(list(outputs), {"image": np.asarray(images[start:start + batch])}),
                               strict=True):
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}
