"""The naive baseline that benchmarks/throughput.py runs against `notcat-sort`: the obvious way.

One process, one image at a time: full decode, EXIF transpose, PIL bilinear resize, the fp32
model with onnxruntime's default threading; prints each file's class probabilities.

    python benchmarks/naive_baseline.py MODEL.onnx FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def main() -> None:
    model, folder = Path(sys.argv[1]), Path(sys.argv[2])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name, (_, size, _, _) = session.get_inputs()[0].name, session.get_inputs()[0].shape
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as image:
            picture = ImageOps.exif_transpose(image).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        probabilities = session.run(None, {name: np.asarray(picture)[None]})[0]
        print(path, *probabilities[0].round(4), sep=",")


if __name__ == "__main__":
    main()
