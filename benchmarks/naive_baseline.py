"""The naive baseline that benchmarks/throughput.py runs against `notcat-sort`: the obvious way.

One process, one image at a time: full decode, EXIF transpose, PIL bilinear resize to the model
card's SIZE (the model takes any size, so its input shape does not say), the fp32 model with
onnxruntime's default threading; prints each file's class probabilities.

    python benchmarks/naive_baseline.py MODEL.onnx FOLDER SIZE
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def main() -> None:
    model, folder, size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as image:
            picture = ImageOps.exif_transpose(image).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        probabilities = session.run(None, {name: np.asarray(picture)[None]})[0]
        print(path, *probabilities[0].round(4), sep=",")


if __name__ == "__main__":
    main()
