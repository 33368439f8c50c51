"""Training pipeline tests on real images from ../shared (fit -> export -> quantize -> evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnxruntime")

from notcat_sort.decode import decode  # noqa: E402
from notcat_sort.model import Classifier, load_card  # noqa: E402
from notcat_sort.scan import scan  # noqa: E402
from training import data  # noqa: E402
from training.__main__ import main  # noqa: E402

pytestmark = pytest.mark.train

SHARED = Path(__file__).parents[1] / ".." / "shared"
POOL = SHARED / "datasets" / "catnotcat"
# ImageNet-1k domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian.
DOMESTIC_CAT_CLASSES = range(281, 286)

if not (POOL / "manifest.csv").is_file():
    pytest.skip(f"training data not found at {POOL}", allow_module_level=True)


@pytest.fixture(scope="module")
def real_images() -> np.ndarray:
    """A few real cats and not-cats, decoded exactly as the runtime does."""
    items = data.limit(data.load_items(POOL), 8, seed=1)
    return np.stack([decode(item.path, 160) for item in items])


def test_tiny_fit_end_to_end(tmp_path: Path, capsys) -> None:
    out, work = tmp_path / "models", tmp_path / "runs"
    tiny = ["fit", "--data", str(POOL), "--out", str(out), "--workdir", str(work), "--limit", "48",
            "--batch-size", "8", "--calibration", "8"]
    main(tiny + ["--epochs", "1"])
    main(tiny + ["--epochs", "2", "--resume", "--export-size", "192"])  # trained at 160, run at 192
    assert "resumed from" in capsys.readouterr().out
    model = out / "notcat-lite0.onnx"
    assert (work / "last.pt").is_file() and (work / "notcat-lite0-fp32.onnx").is_file()
    assert (out / "notcat-lite0-eval" / "confusion.png").stat().st_size > 0
    assert (out / "notcat-lite0-eval" / "precision-recall.png").stat().st_size > 0
    raw = json.loads(model.with_suffix(".json").read_text())
    card = load_card(model)
    assert card.input_size == 192 and card.labels == ("not-cat", "cat") and 0 < card.threshold < 1
    assert raw["size_bytes"] == model.stat().st_size <= 5_000_000
    assert raw["metrics"]["int8"]["overall"]["n"] == raw["training"]["val_images"] > 0
    assert raw["training"]["command"].startswith("python -m training fit")
    assert raw["training"]["resumed_with"][0].endswith("--export-size 192")
    assert len(raw["training"]["epoch_wall_seconds"]) == 2

    probabilities = Classifier(card)._session.run(None, {"image": np.zeros((3, 192, 192, 3), np.uint8)})[0]
    assert probabilities.shape == (3, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    kinds = {n.op_type for n in __import__("onnx").load(str(model)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds

    capsys.readouterr()
    camera = SHARED / "samples" / "camera"
    main(["evaluate", "--model", str(model), "--data", str(camera)])
    printed = capsys.readouterr().out
    images = [candidate.path for candidate in scan([camera])]  # the files the CLI would sort
    assert f"{len(images)} files" in printed  # the malformed ones included: rows, not a crash
    assert all(f"{path}\t" in printed for path in images)
    assert "Nikon_D70.jpg\t" in printed
    main(["evaluate", "--model", str(model), "--data", str(SHARED / "samples" / "orientation")])
    assert "Portrait_8.jpg\t" in capsys.readouterr().out


def test_init_fine_tunes_an_earlier_run_again_at_another_size(tmp_path: Path, capsys) -> None:
    """The second stage of a two-stage fit: low-resolution weights, fine-tuned at a higher size."""
    tiny = ["fit", "--data", str(POOL), "--limit", "24", "--batch-size", "8", "--calibration", "8", "--epochs", "1"]
    main(tiny + ["--out", str(tmp_path / "first"), "--workdir", str(tmp_path / "first-run"), "--size", "96"])
    earlier = torch.load(tmp_path / "first-run" / "last.pt", map_location="cpu", weights_only=False)
    marked = earlier["model"]["blocks.0.0.conv_dw.weight"].mul_(-1).clone()  # a frozen layer, marked
    torch.save(earlier, tmp_path / "first-run" / "marked.pt")
    main(tiny + ["--out", str(tmp_path / "second"), "--workdir", str(tmp_path / "second-run"), "--size", "128",
                 "--init", str(tmp_path / "first-run" / "marked.pt"), "--resume"])  # resumable from the start
    assert "starting from" in capsys.readouterr().out
    model = tmp_path / "second" / "notcat-lite0.onnx"
    assert load_card(model).input_size == 128
    started = json.loads(model.with_suffix(".json").read_text())["training"]["started_from"]
    assert started["size"] == 96 and started["commands"][0].endswith("--size 96")
    later = torch.load(tmp_path / "second-run" / "last.pt", map_location="cpu", weights_only=False)["model"]
    torch.testing.assert_close(later["blocks.0.0.conv_dw.weight"], marked)


def test_mapped_weights_recognise_a_cat() -> None:
    from training.model import imagenet_model, normalise

    model = imagenet_model().eval()
    image = decode(POOL / "cat" / "imagenet-sample-n02123394_Persian_cat.jpg", 224)
    with torch.inference_mode():
        logits = model(normalise(torch.from_numpy(image[None].copy())))
    assert int(logits.argmax()) in DOMESTIC_CAT_CLASSES


def test_map_weights_rejects_a_shape_mismatch() -> None:
    from training.model import map_weights

    with pytest.raises(ValueError, match="does not fit"):
        map_weights({"a": torch.zeros(2, 3)}, {"b": torch.zeros(3, 2)})


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, real_images: np.ndarray) -> Path:
    """The ImageNet backbone with a fresh head, exported and quantized: its folder holds the fp32,
    prepared and onnxruntime-quantized (`fp32-qdq.onnx`) models beside the final `int8.onnx`."""
    from training.export import export_onnx, quantize
    from training.model import classifier

    folder = tmp_path_factory.mktemp("quantized")
    torch.manual_seed(0)
    fp32 = export_onnx(classifier(2).eval(), folder / "fp32.onnx", 160)
    quantize(fp32, folder / "int8.onnx", real_images, folder)
    return folder


def test_int8_model_reads_the_pixels_themselves(quantized: Path, real_images: np.ndarray) -> None:
    """Cutting the float normalisation out of the int8 graph changes no output bit."""
    import onnx

    from training.export import _read_pixels_directly
    from training.fit import _onnx_p_cat

    as_quantized = onnx.load(str(quantized / "fp32-qdq.onnx"))  # onnxruntime's output, before the cut
    assert {"Cast", "Sub", "Div"} <= {node.op_type for node in as_quantized.graph.node}
    stem_input = next(node for node in as_quantized.graph.node if node.op_type == "QuantizeLinear").input[0]
    cut = quantized / "cut.onnx"
    onnx.save(_read_pixels_directly(onnx.load(str(quantized / "fp32-qdq.onnx")), stem_input), str(cut))
    np.testing.assert_array_equal(_onnx_p_cat(cut, 160, real_images),
                                  _onnx_p_cat(quantized / "fp32-qdq.onnx", 160, real_images))
    graph = onnx.load(str(quantized / "int8.onnx")).graph  # what quantize() ships
    assert not {"Cast", "Sub", "Div"} & {node.op_type for node in graph.node}
    transpose = next(node for node in graph.node if node.input[0] == "image")
    assert [node.op_type for node in graph.node if transpose.output[0] in node.input] == ["DequantizeLinear"]


def test_bias_correction_brings_conv_outputs_back_to_the_float_means(quantized: Path, real_images: np.ndarray) -> None:
    import onnx

    from training.export import channel_means, correct_biases

    fp32 = onnx.load(str(quantized / "fp32-prep.onnx"))
    convs = [node for node in fp32.graph.node if node.op_type == "Conv"]
    targets = channel_means(fp32, [conv.output[0] for conv in convs], real_images)

    def mean_errors(model: onnx.ModelProto) -> np.ndarray:
        outputs = {node.name: node.output[0] for node in model.graph.node if node.op_type == "Conv"}
        means = channel_means(model, [outputs[conv.name] for conv in convs], real_images)
        return np.array([np.abs(means[outputs[conv.name]] - targets[conv.output[0]]).mean() for conv in convs])

    model = onnx.load(str(quantized / "fp32-qdq.onnx"))
    before = mean_errors(model)
    correct_biases(fp32, model, real_images)
    after = mean_errors(model)
    assert after.mean() < 0.5 * before.mean() and after[-1] < before[-1]


def test_onnx_matches_pytorch(tmp_path: Path, real_images: np.ndarray) -> None:
    from training.export import export_onnx
    from training.fit import _onnx_p_cat
    from training.model import Exported, classifier

    torch.manual_seed(0)
    net = classifier(2).eval()
    path = export_onnx(net, tmp_path / "fp32.onnx", 160)
    with torch.inference_mode():
        expected = Exported(net)(torch.from_numpy(real_images)).numpy()[:, 1]
    np.testing.assert_allclose(_onnx_p_cat(path, 160, real_images), expected, atol=1e-4)
