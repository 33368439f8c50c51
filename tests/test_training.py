"""Training pipeline tests on real images from ../shared (fit -> export -> quantize -> evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prerequisites import need_module
from shared_data import need

TRAIN_EXTRA = "the train extra: pip install -e '.[train]'"
torch = need_module("torch", TRAIN_EXTRA)
need_module("timm", TRAIN_EXTRA)

from notcat_sort.decode import decode  # noqa: E402
from notcat_sort.model import Classifier, load_card  # noqa: E402
from notcat_sort.scan import scan  # noqa: E402
from training import data  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.runtime import run as run_model  # noqa: E402

pytestmark = pytest.mark.train

SHARED = Path(__file__).parents[1] / ".." / "shared"
POOL = SHARED / "datasets" / "catnotcat"
# ImageNet-1k domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian.
DOMESTIC_CAT_CLASSES = range(281, 286)

need(POOL / "manifest.csv")


@pytest.fixture(scope="module")
def real_images() -> np.ndarray:
    """A few real cats and not-cats, decoded exactly as the runtime does."""
    items = data.limit(data.load_items(POOL), 8, seed=1)
    return np.stack([decode(item.path, 224) for item in items])


def test_tiny_fit_end_to_end(tmp_path: Path, capsys) -> None:
    """fit on a few dozen real images: folds, the teacher's cached outputs, int8 model, card, evaluate."""
    out, work = tmp_path / "models", tmp_path / "runs"
    tiny = ["fit", "--data", str(POOL), "--out", str(out), "--workdir", str(work), "--limit", "64",
            "--calibration", "8", "--folds", "2", "--finetune-epochs", "1"]
    main(tiny)
    first = capsys.readouterr().out
    assert "features of 72 images in" in first  # the frozen teacher ran once (64 + 8 synthetic) ...
    assert "trunk to stage 6 of 72 images in" in first
    teacher = "efficientnet_lite0-*.npz"  # (attributes-*.npz: the breed and mood photos' features, tests/test_attributes.py)
    cached = sorted((work / "features").glob(teacher)) + sorted((work / "features").glob("*trunk6*.npy"))
    assert len(cached) == 2
    stamps = [path.stat().st_mtime_ns for path in cached]
    model = out / "notcat-lite0.onnx"
    raw = json.loads(model.with_suffix(".json").read_text())

    main(tiny)  # ... and a rerun reuses its outputs instead of running it again
    again = capsys.readouterr().out
    assert "features of" not in again and "trunk to stage" not in again
    assert [path.stat().st_mtime_ns for path in cached] == stamps
    assert sorted((work / "features").glob(teacher)) == cached[:1]
    assert json.loads(model.with_suffix(".json").read_text())["validation"]["fold_probes"] == \
        raw["validation"]["fold_probes"]  # deterministic

    card = load_card(model)
    assert card.input_size == 224 and card.labels == ("not-cat", "cat") and 0 < card.threshold < 1
    assert raw["size_bytes"] == model.stat().st_size <= 4_000_000
    assert raw["training"]["command"].startswith("python -m training fit")
    variants = [row["variant"] for row in raw["validation"]["comparison"]]
    assert raw["validation"]["chosen"] in variants
    assert sum("LP-FT + ImageNet distillation" in name for name in variants) == 2  # WiSE-FT alphas 0.5 and 1
    assert "frozen network, evidence C=0.1 (float)" in variants  # their like-for-like reference ...
    assert raw["validation"]["chosen"] != "frozen network, evidence C=0.1 (float)"  # ... which never ships
    assert len(raw["validation"]["fold_probes"]) == 2
    assert raw["calibration"]["temperature"] > 0
    outside = raw["metrics"]["out_of_source"]["int8"]["overall"]["n"]
    inside = raw["metrics"]["in_source"]["int8"]["overall"]["n"]
    assert outside > 0 and inside > 0 and outside + inside == raw["training"]["images"]
    assert (out / "notcat-lite0-eval" / "confusion.png").stat().st_size > 0
    looks = [row["variant"] for row in raw["small_cats"]["variants"]]  # each look on small, far-away cats
    assert len(looks) == 3 and all(look in first for look in looks) and "small-cat R" in first
    assert not list(out.glob(".fit-*"))  # the staging folder is gone

    session = Classifier(card)._session
    names = [o.name for o in session.get_outputs()]
    assert names == ["probabilities", "embedding", "evidence", "breeds", "mood"]  # one fit makes the whole model
    assert set(raw["attributes"]) >= {"breeds", "mood"}
    probabilities, embedding, evidence, _, _ = session.run(None, {"image": np.zeros((3, 224, 224, 3), np.uint8)})
    assert probabilities.shape == (3, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert embedding.shape == (3, 1280) and evidence.shape == (3, 22)
    kinds = {n.op_type for n in __import__("onnx").load(str(model)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds

    # evaluate reproduces the card's out-of-source figures from the model file alone
    capsys.readouterr()
    reproduced = evaluate(model, [POOL], "out-of-source", None, None)
    assert reproduced["overall"] == raw["metrics"]["out_of_source"]["int8"]["overall"]

    camera = SHARED / "samples" / "camera"
    main(["evaluate", "--model", str(model), "--data", str(camera)])
    printed = capsys.readouterr().out
    images = [candidate.path for candidate in scan([camera])]  # the files the CLI would sort
    assert f"{len(images)} files" in printed  # the malformed ones included: rows, not a crash
    assert all(f"{path}\t" in printed for path in images)


def test_evaluate_on_empty_class_folders_says_so(tmp_path: Path) -> None:
    for label in data.LABELS:
        (tmp_path / label).mkdir()
    with pytest.raises(SystemExit, match="no labelled images"):
        main(["evaluate", "--data", str(tmp_path)])


def test_evidence_keeps_the_imagenet_cat_log_probabilities() -> None:
    """At full rank the head's input is the ImageNet model's own log-softmax for the 13 cat classes."""
    from training.model import imagenet_model, normalise
    from training.prior import CAT_CLASSES, Evidence, evidence

    model = imagenet_model().eval()
    images = np.stack([decode(POOL / "cat" / "imagenet-sample-n02123394_Persian_cat.jpg", 224),
                       decode(POOL / "not-cat" / "imagenet-sample-n02127052_lynx.jpg", 224)])
    with torch.inference_mode():
        pooled = model.forward_head(model.forward_features(normalise(torch.from_numpy(images))), pre_logits=True)
        log_p = torch.log_softmax(model.get_classifier()(pooled), dim=1).numpy()
    full = evidence(Evidence(model.get_classifier(), rank=987).eval(), pooled.numpy())
    np.testing.assert_allclose(full[:, :13], np.maximum(log_p[:, list(CAT_CLASSES)], -14), atol=1e-3)
    persian, lynx = full[:, CAT_CLASSES.index(283)], full[:, CAT_CLASSES.index(287)]
    assert persian[0] > persian[1] and lynx[1] > lynx[0]


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
def shipped() -> torch.nn.Module:
    """The ImageNet backbone with a random evidence head: the shape of what fit ships."""
    from training.model import Shipped, imagenet_model
    from training.prior import EVIDENCE_NAMES, Evidence
    from training.probe import Probe

    backbone = imagenet_model().eval()
    rng = np.random.default_rng(0)
    head = Probe(rng.normal(size=len(EVIDENCE_NAMES)), 0.1, rng.normal(size=len(EVIDENCE_NAMES)),
                 np.ones(len(EVIDENCE_NAMES)))
    return Shipped(backbone, Evidence(backbone.get_classifier()), head, 1.0, "evidence").eval()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, shipped: torch.nn.Module, real_images: np.ndarray) -> Path:
    """Exported and quantized: the folder holds the fp32, prepared and onnxruntime-quantized
    (`fp32-qdq.onnx`) models beside the final `int8.onnx`."""
    from training.export import export_onnx, quantize
    from training.model import Shipped

    folder = tmp_path_factory.mktemp("quantized")
    fp32 = export_onnx(shipped, folder / "fp32.onnx", 224, Shipped.OUTPUTS)
    quantize(fp32, folder / "int8.onnx", real_images, folder)
    return folder


def _p_cat(model: Path, images: np.ndarray) -> np.ndarray:
    return run_model(model, images, ("probabilities",))["probabilities"][:, 1]


def test_int8_model_reads_the_pixels_themselves(quantized: Path, real_images: np.ndarray) -> None:
    """Cutting the float normalisation out of the int8 graph changes no output bit."""
    import onnx

    from training.export import _downstream, _read_pixels_directly

    as_quantized = onnx.load(str(quantized / "fp32-qdq.onnx"))  # onnxruntime's output, before the cut
    assert {"Cast", "Sub", "Div"} <= {node.op_type for node in as_quantized.graph.node}
    stem_input = next(node for node in as_quantized.graph.node if node.op_type == "QuantizeLinear").input[0]
    cut = quantized / "cut.onnx"
    onnx.save(_read_pixels_directly(onnx.load(str(quantized / "fp32-qdq.onnx")), stem_input), str(cut))
    np.testing.assert_array_equal(_p_cat(cut, real_images), _p_cat(quantized / "fp32-qdq.onnx", real_images))
    graph = onnx.load(str(quantized / "int8.onnx")).graph  # what quantize() ships
    head = {node.name for node in _downstream(graph, next(n for n in graph.node if n.op_type == "GlobalAveragePool").input[0])}
    assert not {"Cast", "Sub", "Div"} & {node.op_type for node in graph.node if node.name not in head}
    transpose = next(node for node in graph.node if node.input[0] == "image")
    assert [node.op_type for node in graph.node if transpose.output[0] in node.input] == ["DequantizeLinear"]


def test_the_head_runs_in_float_from_int8_weights(quantized: Path, real_images: np.ndarray) -> None:
    """The head's big matrices are stored as int8 (the model's size) but compute in float: the int8
    model's evidence follows the fp32 model's to a small fraction of a log-unit."""
    import onnx

    graph = onnx.load(str(quantized / "int8.onnx")).graph
    stored = {init.name: init.data_type for init in graph.initializer}
    head_weights = [name for name in stored if name.endswith("_int8")]
    assert len(head_weights) == 3 and all(stored[name] == onnx.TensorProto.INT8 for name in head_weights)
    fp32 = run_model(quantized / "fp32.onnx", real_images, ("evidence", "embedding"))
    int8 = run_model(quantized / "int8.onnx", real_images, ("evidence", "embedding"))
    assert np.abs(int8["evidence"] - fp32["evidence"]).mean() < 0.5
    assert np.corrcoef(int8["embedding"].ravel(), fp32["embedding"].ravel())[0, 1] > 0.95


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


def test_onnx_matches_pytorch(quantized: Path, shipped: torch.nn.Module, real_images: np.ndarray) -> None:
    with torch.inference_mode():
        expected = shipped(torch.from_numpy(real_images))[0].numpy()[:, 1]
    np.testing.assert_allclose(_p_cat(quantized / "fp32.onnx", real_images), expected, atol=1e-4)


@pytest.mark.parametrize("height, width", [(192, 192), (120, 160)])
def test_the_models_take_images_of_any_size(quantized: Path, shipped: torch.nn.Module, real_images: np.ndarray,
                                            height: int, width: int) -> None:
    """Traced at 224, the exported graphs take a thumbnail at its own size (the card's thumbnail
    size): the fp32 graph computes what the network does at that size, the int8 graph follows it."""
    from PIL import Image

    small = np.stack([np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
                      for image in real_images])
    with torch.inference_mode():
        expected = shipped(torch.from_numpy(small))[0].numpy()[:, 1]
    np.testing.assert_allclose(_p_cat(quantized / "fp32.onnx", small), expected, atol=1e-4)
    at_224 = _p_cat(quantized / "fp32.onnx", real_images)
    assert np.abs(expected - at_224).max() > 1e-3  # the size really changed what the network saw
    np.testing.assert_allclose(_p_cat(quantized / "int8.onnx", small), expected, atol=0.1)


@pytest.fixture(scope="module")
def cached_pool(tmp_path_factory: pytest.TempPathFactory):
    """A dozen real images through fit's caches: the teacher's outputs and the trunk below stage 6."""
    from training import features
    from training.model import ARCH

    work = tmp_path_factory.mktemp("features")
    items = data.limit(data.load_items(POOL), 12, seed=3)
    return (items, features.outputs(items, ARCH, 224, work), features.trunk(items, ARCH, 224, 6, work),
            features.pixels(items, 224, work))


def _tuned(cached_pool, distillation: float):
    """LP-FT of the top stage on the dozen images, hard (high learning rate, several epochs)."""
    from training import finetune, prior, probe
    from training.model import imagenet_classifier, imagenet_model

    items, teacher, trunk, _ = cached_pool
    net = imagenet_model().eval()
    evidence = prior.Evidence(imagenet_classifier(net))
    y, weights = np.array([item.target for item in items]), np.ones(len(items))
    start = probe.fit(prior.evidence(evidence, teacher.features), y, weights, 0.1)
    top = finetune.Top(net, 6)
    recipe = finetune.Recipe(epochs=6, lr=3e-3, batch=4, distillation=distillation)
    tuned = finetune.tune(top, imagenet_classifier(net), evidence, start, trunk, teacher.logits, y, weights,
                          np.arange(len(items)), recipe, seed=0)
    return net, top, tuned


def test_the_tuned_top_starts_as_imagenet_and_installs_into_the_network(cached_pool) -> None:
    from training import finetune
    from training.model import normalise, pooled_features

    _, teacher, trunk, pixels = cached_pool
    net, top, tuned = _tuned(cached_pool, distillation=1.0)
    np.testing.assert_allclose(finetune.pooled(top, trunk), teacher.features, atol=5e-3)  # from the fp16 cache
    assert np.abs(finetune.pooled(tuned, trunk) - teacher.features).max() > 0.05  # tuning moved it
    with torch.inference_mode():
        whole = pooled_features(tuned.installed(net).eval(), normalise(torch.from_numpy(np.array(pixels))))  # a writable copy of the memory map
    np.testing.assert_allclose(whole.numpy(), finetune.pooled(tuned, trunk), atol=5e-3)
    half = finetune.pooled(finetune.wise(top, tuned, 0.5), trunk)
    assert np.allclose(finetune.pooled(finetune.wise(top, tuned, 0.0), trunk), finetune.pooled(top, trunk))
    assert 0 < np.abs(half - teacher.features).mean() < np.abs(finetune.pooled(tuned, trunk) - teacher.features).mean()


def test_distillation_keeps_the_imagenet_outputs(cached_pool) -> None:
    """The teacher term is what keeps the tuned network's 1000 ImageNet outputs near the frozen ones."""
    from training import finetune
    from training.model import imagenet_classifier

    _, teacher, trunk, _ = cached_pool

    def drift(distillation: float) -> float:
        net, _, tuned = _tuned(cached_pool, distillation)
        with torch.inference_mode():
            student = imagenet_classifier(net)(torch.from_numpy(finetune.pooled(tuned, trunk)))
        teacher_p = torch.softmax(torch.from_numpy(teacher.logits), dim=1)
        return float((teacher_p * (teacher_p.log() - torch.log_softmax(student, dim=1))).sum(dim=1).mean())

    assert drift(10.0) < 0.5 * drift(0.0)


def _in_rooms(cats: list[Path], rooms: list[Path]) -> np.ndarray:
    """Each cat photo at half the side, in the middle of each room photo: room-major, (rooms x cats, 224, 224, 3)."""
    from PIL import Image

    pasted = []
    for room in rooms:
        for cat in cats:
            background = Image.open(room).convert("RGB").resize((224, 224))
            photo = Image.open(cat).convert("RGB")
            shrink = 0.5 * 224 / max(photo.size)
            photo = photo.resize((round(photo.width * shrink), round(photo.height * shrink)))
            background.paste(photo, ((224 - photo.width) // 2, (224 - photo.height) // 2))
            pasted.append(np.asarray(background))
    return np.stack(pasted)


def _same_cat_nearest(embeddings: np.ndarray, cats: int) -> float:
    """Share of photos whose nearest other photo (power-normalised cosine) shows the same cat."""
    from notcat_sort.cats import NO_HEAD

    vectors = NO_HEAD.vectors(embeddings)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    return float(np.mean(np.argmax(similarity, axis=1) % cats == np.arange(len(vectors)) % cats))


def test_the_embedding_tells_cats_apart_in_a_room_they_share(quantized: Path, shipped: torch.nn.Module) -> None:
    """Six campus cats, each pasted into the same two room photos: by the exported embedding (pooled
    over the cat) every photo's nearest is the same cat in the other room, where the global average
    of the same feature maps, the embedding before, puts some with another cat in the same room."""
    import csv

    from training.model import normalise, pooled_features

    with open(POOL / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rooms = [POOL / row["path"] for row in rows if row["group"] == "rooms"][:2]
    one_each = {Path(row["path"]).name[:len("campus-cats-") + 10]: POOL / row["path"] for row in rows if row["group"] == "campus-cats"}
    cats = [one_each[cat] for cat in sorted(one_each)[:6]]
    images = _in_rooms(cats, rooms)
    with torch.inference_mode():
        expected = shipped(torch.from_numpy(images))[1].numpy()
        averaged = pooled_features(shipped.backbone, normalise(torch.from_numpy(images))).numpy()
    fp32 = run_model(quantized / "fp32.onnx", images, ("embedding",))["embedding"]
    np.testing.assert_allclose(fp32, expected, rtol=1e-3, atol=1e-4)
    assert _same_cat_nearest(averaged, len(cats)) < 0.9
    assert _same_cat_nearest(fp32, len(cats)) == 1.0
    assert _same_cat_nearest(run_model(quantized / "int8.onnx", images, ("embedding",))["embedding"], len(cats)) == 1.0
