"""Training pipeline for the notcat-lite0 model: data, fine-tuning, ONNX export, int8 quantization,
evaluation and the model card. Needs the `train` extra; the runtime never imports this package."""
