"""Which embedding and which clustering tell individual cats apart: `--group-cats` measured.

    python benchmarks/identity.py [--data ../shared/datasets/catnotcat] [--folds 4] [--seed 0]

DATA is a catnotcat dataset (its `campus-cats` group; the 10 characters after `campus-cats-`
name the cat) or a folder with one folder per cat (NekoNet's layout). Needs no torch: the
shipped ONNX model's `embedding` output, numpy, and for the face-crop variants
opencv-python-headless < 5 (its frontal cat-face Haar cascade; skipped without it).

For every embedding variant it prints 1-NN identity accuracy across sessions (photos of one cat
taken close in time, see training/identity.py, never count as each other's neighbour), with all
the cats as the gallery and within folds of held-out cats, and for each clustering the pairwise
precision and recall on held-out cats, each fold cut at the threshold chosen on the other folds
(training.identity.held_out). Variants: the whole photo as the runtime embeds it, as is and
power-normalised (signed square root: what --group-cats uses); centred on the mean of the photos
grouped; averaged with its mirror image, and with centre crops (test-time augmentation: one to
three more inferences per cat photo); the largest cat face found, and the face and whole photo
concatenated. Clusterings: the runtime's one-pass centroid grouping (notcat_sort.cats) and dense
average-linkage agglomerative clustering.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/, for the evaluation
from notcat_sort.cats import NO_HEAD, unit
from notcat_sort.decode import decode
from notcat_sort.model import Classifier, default_model_path, load_card
from training.identity import CLUSTERINGS, IMAGES, held_out, nearest_neighbour_accuracy, sessions_of

REPO = Path(__file__).resolve().parents[1]
SIZE = 224
CENTRE = 0.8  # the centre crop's share of each side
FACE_CONTEXT = 1.6  # the face crop's side, in face-box sides: ears and cheeks in, as much coat as fits
DETECT_SIDE = 512  # faces are looked for on the photo shrunk to this long side


def photos_of(data: Path) -> tuple[list[Path], np.ndarray]:
    """The photos and each one's cat."""
    manifest = data / "manifest.csv"
    if manifest.exists():
        with open(manifest, newline="") as handle:
            paths = [data / row["path"] for row in csv.DictReader(handle) if row["group"] == "campus-cats"]
        return paths, np.array([path.name[len("campus-cats-"):][:10] for path in paths])
    pairs = [(path, folder.name) for folder in sorted(data.iterdir()) if folder.is_dir()
             for path in sorted(folder.rglob("*")) if path.suffix.lower() in IMAGES]
    return [path for path, _ in pairs], np.array([cat for _, cat in pairs])


def _square(image: Image.Image) -> np.ndarray:
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR))


def _centre(image: Image.Image) -> Image.Image:
    width, height = image.size
    left, top = round(width * (1 - CENTRE) / 2), round(height * (1 - CENTRE) / 2)
    return image.crop((left, top, width - left, height - top))


class FaceFinder:
    """The largest frontal cat face (OpenCV's extended Haar cascade), with the time it took."""

    def __init__(self) -> None:
        import cv2  # opencv-python-headless < 5: 5.0 dropped CascadeClassifier
        import cv2.data

        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalcatface_extended.xml")
        self.seconds: list[float] = []

    def crop(self, image: Image.Image) -> Image.Image | None:
        started = time.process_time()
        scale = min(1.0, DETECT_SIDE / max(image.size))
        small = image if scale == 1.0 else image.resize((round(image.width * scale), round(image.height * scale)))
        grey = self._cv2.cvtColor(np.asarray(small), self._cv2.COLOR_RGB2GRAY)
        found = self._cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3, minSize=(24, 24))
        self.seconds.append(time.process_time() - started)
        if len(found) == 0:
            return None
        x, y, width, height = (value / scale for value in max(found, key=lambda box: box[2] * box[3]))
        side = max(width, height) * FACE_CONTEXT
        centre_x, centre_y = x + width / 2, y + height / 2
        return image.crop((round(max(0, centre_x - side / 2)), round(max(0, centre_y - side / 2)),
                           round(min(image.width, centre_x + side / 2)), round(min(image.height, centre_y + side / 2))))


def embed(paths: list[Path], classifier: Classifier, faces: FaceFinder | None) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """Raw embeddings per kind of input (whole, mirror, centre, centre mirror, face where found),
    which photos had a face, and CPU seconds per inference of one image (CPU time, not wall time:
    the figures stay comparable on a machine that others share)."""
    inputs: dict[str, list[np.ndarray]] = {"whole": [], "mirror": [], "centre": [], "centre mirror": [], "face": []}
    found = []
    for path in paths:
        whole = decode(path.read_bytes(), SIZE)  # exactly what the runtime embeds
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        centre = _square(_centre(image))
        face = faces.crop(image) if faces is not None else None
        found.append(face is not None)
        for kind, array in (("whole", whole), ("mirror", whole[:, ::-1]), ("centre", centre), ("centre mirror", centre[:, ::-1]),
                            ("face", _square(face) if face is not None else whole)):
            inputs[kind].append(np.ascontiguousarray(array))
    embeddings: dict[str, np.ndarray] = {}
    started, inferred = time.process_time(), 0
    for kind, arrays in inputs.items():
        batches = [classifier.scores(np.stack(arrays[start:start + 32]))[1] for start in range(0, len(arrays), 32)]
        embeddings[kind] = np.concatenate([batch for batch in batches if batch is not None])
        inferred += len(arrays)
    return embeddings, np.array(found), (time.process_time() - started) / inferred


def variants(embeddings: dict[str, np.ndarray], with_faces: bool) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Name -> the vectors of a subset of the photos (given by index), made from the raw embeddings."""
    root = NO_HEAD.vectors
    found: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "whole photo, as is (before)": lambda i: unit(embeddings["whole"][i]),
        "whole photo, signed sqrt (runtime)": lambda i: root(embeddings["whole"][i]),
        "whole, sqrt, centred on the photos": lambda i: unit(root(embeddings["whole"][i]) - root(embeddings["whole"][i]).mean(0)),
        "whole + mirror, sqrt": lambda i: root((embeddings["whole"][i] + embeddings["mirror"][i]) / 2),
        "whole + mirror + centre crops, sqrt": lambda i: root(sum(embeddings[kind][i] for kind in
                                                                 ("whole", "mirror", "centre", "centre mirror")) / 4),
    }
    if with_faces:
        found["face crop (else whole), sqrt"] = lambda i: root(embeddings["face"][i])
        found["whole | face crop, sqrt"] = lambda i: unit(np.concatenate([root(embeddings["whole"][i]),
                                                                          root(embeddings["face"][i])], axis=1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "catnotcat")
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--folds", type=int, default=4, help="validation folds, by cat")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths, cat_names = photos_of(args.data)
    cats = np.unique(cat_names, return_inverse=True)[1]
    try:
        faces: FaceFinder | None = FaceFinder()
    except (ImportError, AttributeError) as error:
        print(f"face crops skipped: {error} (pip install 'opencv-python-headless<5')", file=sys.stderr)
        faces = None
    classifier = Classifier(load_card(args.model), threads=2)
    embeddings, found, per_inference = embed(paths, classifier, faces)
    sessions = sessions_of(paths, cats, embeddings["whole"])
    print(f"{len(paths)} photos of {cats.max() + 1} cats in {sessions.max() + 1} sessions; {args.folds} folds by cat, "
          f"seed {args.seed}; {1000 * per_inference:.1f} CPU ms per inference")
    if faces is not None:
        print(f"cat faces found in {int(found.sum())} of {len(paths)} photos ({100 * found.mean():.0f} %), "
              f"{1000 * float(np.median(faces.seconds)):.1f} CPU ms per photo (median)")
    fold_of_cat = np.random.default_rng(args.seed).permutation(cats.max() + 1) % args.folds
    folds = [np.flatnonzero(fold_of_cat[cats] == fold) for fold in range(args.folds)]
    everyone = np.arange(len(paths))
    print(f"{'variant':<38} {'clustering':<16} 1-NN all cats  in folds  pairwise precision  recall  thresholds (other folds)")
    for name, vectors_of in variants(embeddings, faces is not None).items():
        overall, _ = nearest_neighbour_accuracy(vectors_of(everyone), cats, sessions)
        for clustering_name, clustering in CLUSTERINGS.items():
            scores = held_out([(vectors_of(members), cats[members], sessions[members]) for members in folds], clustering)
            print(f"{name:<38} {clustering_name:<16} {overall:13.3f} {scores['nn_accuracy']:9.3f} "
                  f"{scores['precision']:19.3f} {scores['recall']:7.3f}  {' '.join(f'{t:.2f}' for t in scores['thresholds'])}"
                  f" (all folds {scores['threshold']:.2f})", flush=True)


if __name__ == "__main__":
    main()
