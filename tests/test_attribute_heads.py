"""The breed and mood heads as training makes them (training/heads.py; the runtime's side is in
test_attributes.py): appended to the shipped graphs in the same inference, equal to their numpy
reference on real photos, the cat probabilities bit for bit untouched, and a tiny fit end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from prerequisites import need_module
from shared_data import need

TRAIN_EXTRA = "the train extra: pip install -e '.[train]'"
onnx = need_module("onnx", TRAIN_EXTRA)
need_module("sklearn", TRAIN_EXTRA)
need_module("matplotlib", TRAIN_EXTRA)

from notcat_sort.content import sha256_file  # noqa: E402
from notcat_sort.decode import decode  # noqa: E402
from training import attributes, heads, runtime  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.attributes_fit import fp32_twin, without_heads  # noqa: E402

pytestmark = pytest.mark.train

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "notcat-lite0.onnx"
DATASETS = ROOT.parent / "shared" / "datasets"
MAX_MODEL_BYTES = 4_000_000

need(DATASETS / "breeds" / "manifest.csv")
need(DATASETS / "mood" / "manifest.csv")


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Two photos of each breed and one of each mood, decoded as the CLI decodes them."""
    breeds = attributes.breed_photos(DATASETS / "breeds")[::88]
    moods = attributes.mood_photos(DATASETS / "mood")[::72]
    return np.stack([decode(photo.path, 224) for photo in breeds + moods])


def _outputs(model: onnx.ModelProto, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of `model`, and every pooling the heads may read, in one run."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    poolings = attributes.add_poolings(probe.graph, nodes)
    probe.graph.node.extend(nodes)
    known = {output.name for output in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
                              for tensor in poolings.values() if tensor not in known)
    names = [output.name for output in probe.graph.output]
    values = dict(zip(names, runtime.session(probe.SerializeToString()).run(names, {"image": images}), strict=True))
    return {**values, **{pooling: values[tensor] for pooling, tensor in poolings.items()}}


def _head(model: onnx.ModelProto, output: str, card: dict) -> heads.Head:
    """The head `output` as the graph stores it (float weights; int8 ones times their scales)."""
    stored = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    prefix = f"heads/{output}/weights"
    weights = stored.get(prefix)
    if weights is None:
        weights = stored[prefix + "_int8"].astype(np.float32) * stored[prefix + "_scale"]
    section = card["attributes"][output]
    return heads.Head(output, tuple(section["labels"]), tuple(section["reads"]), weights.astype(np.float64),
                      stored[f"heads/{output}/bias"].astype(np.float64), section["power"])


def test_the_card_names_the_heads_outputs() -> None:
    card = json.loads(MODEL.with_suffix(".json").read_text(encoding="utf-8"))
    breeds = sorted({photo.label for photo in attributes.breed_photos(DATASETS / "breeds")})
    section = card["attributes"]
    assert section["breeds"]["labels"] == [*breeds, attributes.DOMESTIC]
    assert len(section["mood"]["labels"]) == 7
    assert 0.0 <= section["breeds"]["confident"] < 1.0
    assert "Maine Coon" in breeds  # as people write it, not manifest.csv's Maine_Coon
    assert {"breeds", "mood"} <= set(card["extra_outputs"])
    assert card["size_bytes"] == MODEL.stat().st_size <= MAX_MODEL_BYTES


@pytest.mark.parametrize("path", [MODEL, fp32_twin(MODEL)], ids=["int8", "fp32"])
def test_the_heads_compute_what_numpy_does_on_real_photos(path: Path, photos: np.ndarray) -> None:
    """From the graph's own pooled features, the appended normalisation, Gemm and softmax give the numpy
    reference's probabilities (both files: the int8 one computes in float from its int8 weights)."""
    card = json.loads(MODEL.with_suffix(".json").read_text(encoding="utf-8"))
    model = onnx.load(str(path))
    outputs = _outputs(model, photos)
    for output in ("breeds", "mood"):
        head = _head(model, output, card)
        assert outputs[output].shape == (len(photos), len(head.labels))
        np.testing.assert_allclose(outputs[output], head.probabilities(outputs), rtol=0, atol=2e-6)


def test_int8_heads_follow_the_fp32_ones(photos: np.ndarray) -> None:
    """The whole int8 model (backbone and heads) names the fp32 model's top breed on nearly every photo."""
    int8 = _outputs(onnx.load(str(MODEL)), photos)
    fp32 = _outputs(onnx.load(str(fp32_twin(MODEL))), photos)
    breed_photos = slice(0, 24)
    agree = np.argmax(int8["breeds"][breed_photos], axis=1) == np.argmax(fp32["breeds"][breed_photos], axis=1)
    assert agree.mean() >= 0.9, agree
    assert np.abs(int8["breeds"] - fp32["breeds"]).max() < 0.5


@pytest.mark.parametrize("path", [MODEL, fp32_twin(MODEL)], ids=["int8", "fp32"])
def test_appending_the_heads_leaves_the_cat_probabilities_bit_for_bit(path: Path, photos: np.ndarray) -> None:
    model = onnx.load(str(path))
    with_heads = _outputs(model, photos)
    without = _outputs(without_heads(model), photos)
    assert "breeds" not in without
    assert np.array_equal(with_heads["probabilities"], without["probabilities"])
    assert np.array_equal(with_heads["embedding"], without["embedding"])


def test_tiny_fit_of_the_heads_end_to_end(tmp_path: Path, capsys) -> None:
    """`attributes` on five photos per label: both graphs get the heads, the card its section and plots,
    the cat probabilities stay as they were, and `evaluate --attributes` prints the card's figures."""
    model = tmp_path / MODEL.name
    for source in (MODEL, MODEL.with_suffix(".json"), fp32_twin(MODEL)):
        shutil.copy(source, tmp_path / source.name)
    for path in (model, fp32_twin(model)):  # start from graphs without heads, as a first fit does
        onnx.save(without_heads(onnx.load(str(path))), str(path))
    sample = np.stack([decode(photo.path, 224) for photo in attributes.mood_photos(DATASETS / "mood")[:3]])
    before = {path: _outputs(onnx.load(str(path)), sample) for path in (model, fp32_twin(model))}
    work = tmp_path / "runs"
    main(["attributes", "--model", str(model), "--datasets", str(DATASETS), "--workdir", str(work), "--limit", "5",
          "--non-pedigree", "5"])
    fitted = capsys.readouterr().out
    card = json.loads(model.with_suffix(".json").read_text(encoding="utf-8"))
    assert card["sha256"] == sha256_file(model) and card["size_bytes"] == model.stat().st_size
    for output, count in (("breeds", 13), ("mood", 7)):
        assert len(card["attributes"][output]["labels"]) == count
        assert (tmp_path / card["attributes"][output]["plot"]).stat().st_size > 1000
    for path, old in before.items():
        new = _outputs(onnx.load(str(path)), sample)
        assert np.array_equal(new["probabilities"], old["probabilities"])
        assert new["breeds"].shape == (len(sample), 13) and new["mood"].shape == (len(sample), 7)
        np.testing.assert_allclose(new["breeds"].sum(axis=1), 1.0, atol=1e-5)
    assert model.stat().st_size <= MAX_MODEL_BYTES

    main(["evaluate", "--model", str(model), "--attributes", str(DATASETS), "--workdir", str(work)])
    printed = capsys.readouterr().out.splitlines()
    for output in ("breeds", "mood"):
        recomputed = next(line for line in printed if line.startswith(f"{output} ("))
        card_line = printed[printed.index(recomputed) + 1]
        assert recomputed.split("out of fold: ")[1] == card_line.split("card:")[1].strip()
        assert recomputed.split("out of fold: ")[1] in fitted

