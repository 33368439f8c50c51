"""The classifier: an int8 ONNX model and the model card that says how to feed it.

The graph takes uint8 RGB images, NHWC, already resized to the card's square input size (an EXIF
thumbnail: to the card's smaller thumbnail size), and does its own normalisation; it returns
class probabilities in the card's label order. Keeping normalisation inside the graph means the
runtime and training cannot disagree about it.
A model may also output `embedding`, its last feature map pooled over the cat: computed in the same
call, it is what `--group-cats` tells individual cats apart by (see notcat_sort.cats).
A model may also output attributes of a cat, softmaxes over the labels its card's `attributes`
lists (`breeds`, `mood`): computed in the same call too, so they cost no second inference.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from notcat_sort.content import sha256_file

DEFAULT_MODEL_FILE = "notcat-lite0.onnx"
PROBABILITIES_OUTPUT = "probabilities"
EMBEDDING_OUTPUT = "embedding"
DOMESTIC = "domestic"  # the breed label, and folder, of a cat of no breed the model is sure of


class Trait(str, Enum):
    """An attribute of a cat that a model may output: the card's `attributes` key."""

    BREED = "breeds"
    MOOD = "mood"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Guess:
    """An attribute's top label and its probability; `name` is "" where the card's rule withholds it
    (a breed below the card's `confident`, or the `domestic` label)."""

    name: str
    p: float


@dataclass(frozen=True)
class Attribute:
    """One of the card's `attributes`: a softmax output over `labels`, named only from `confident` on."""

    output: str
    labels: tuple[str, ...]
    confident: float = 0.0  # the breeds' rule; the mood has none (every mood is a guess)

    def ranked(self, probabilities: np.ndarray, top: int, leave_out: Collection[str] = ()) -> list[Guess]:
        """The `top` labels by probability, the most likely first (names as the card has them), but those
        in `leave_out` (`domestic` from a list of breeds: it is none)."""
        order = np.argsort(-probabilities, kind="stable")
        return [Guess(self.labels[i], float(probabilities[i])) for i in order if self.labels[i] not in leave_out][:top]

    def guess(self, probabilities: np.ndarray) -> Guess:
        """The likeliest label other than `domestic` with its p, named only where it is the top label and
        reaches `confident`: a house cat's row says "no breed, and the best breed had p 0.004", not the
        p of `domestic`, which would read as a confident breed left blank."""
        best = self.ranked(probabilities, 1, leave_out=(DOMESTIC,))[0]
        named = best.p >= max(self.confident, float(probabilities.max()))  # the top label, and sure enough
        return best if named else Guess("", best.p)


def _attributes(entry: dict | None) -> dict[Trait, Attribute]:
    """The card's `attributes` that this version knows (others are left alone)."""
    found = {}
    for trait in Trait:
        if entry is not None and trait.value in entry:
            raw = entry[trait.value]
            labels = tuple(str(label) for label in raw["labels"])
            unusable = [label for label in labels if not _folder_name(label)]
            if unusable or not labels:
                raise ValueError(f"attributes.{trait}: labels must be names of folders and keywords, not {unusable or labels}")
            found[trait] = Attribute(str(raw["output"]), labels, float(raw.get("confident", 0.0)))
    return found


def _folder_name(label: str) -> bool:
    """A label can name a folder (--breed-folders) and a keyword level: no separator, no `.`/`..`."""
    return bool(label) and label == label.strip() and label not in (".", "..") and not any(c in label for c in "/\\|\0")


@dataclass(frozen=True)
class ModelCard:
    """What the runtime needs from a model's card (`<model>.json` beside `<model>.onnx`)."""

    path: Path
    name: str
    version: str
    input_size: int
    # The square size an EXIF thumbnail is classified at: smaller than a photo's, as the model takes
    # any size (see training/thumbnails.py); a card without one (older): `input_size`.
    thumbnail_size: int
    labels: tuple[str, ...]
    threshold: float
    sha256: str
    has_embedding: bool = False  # the card lists an `embedding` among the model's extra outputs
    # The p_cat band [low, high] in which an EXIF thumbnail's verdict is checked by decoding the
    # image itself; None (a card without one) turns the thumbnail fast path off.
    thumbnail_band: tuple[float, float] | None = None
    # The p_cat band around the threshold that `--uncertain` without a value sends to unsure/, chosen
    # out of source by `python -m training uncertain`; None for a card without one.
    uncertain_band: tuple[float, float] | None = None
    # The cat's attributes the model outputs (its breed, its mood); empty for a model without them.
    attributes: Mapping[Trait, Attribute] = field(default_factory=dict)

    @property
    def cat_index(self) -> int:
        return self.labels.index("cat")


def card_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def default_model_path() -> Path:
    """The model shipped inside the wheel, or `models/` when running from a checkout."""
    packaged = Path(__file__).parent / "_model" / DEFAULT_MODEL_FILE
    if packaged.exists():
        return packaged
    return Path(__file__).resolve().parent.parent / "models" / DEFAULT_MODEL_FILE


class ModelError(ValueError):
    """A model that cannot be used: missing, without a readable card, or not the file its card describes."""


def _band(entry: dict | None, what: str) -> tuple[float, float] | None:
    """The band [low, high] of a card entry `{"low": ..., "high": ...}`; None without the entry."""
    if entry is None:
        return None
    low, high = float(entry["low"]), float(entry["high"])
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"{what} band {low}:{high} is not 0 <= low <= high <= 1")
    return low, high


def _thumbnail(entry: dict | None, input_size: int) -> tuple[tuple[float, float] | None, int]:
    """The band and input size of the card's `thumbnail: {"low": ..., "high": ..., "size": ...}`,
    chosen by `python -m training thumbnails`; no band without the entry, and without a size the photo's."""
    if entry is None:
        return None, input_size
    return _band(entry, "thumbnail"), int(entry.get("size", input_size))


def load_card(model_path: Path) -> ModelCard:
    """The card of `model_path`, once the model file is shown to be the one the card describes:
    the card's sha256 is the model's identity (the prediction cache is keyed on it)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError(f"model not found: {model_path}")
    card_file = card_path(model_path)
    try:
        raw = json.loads(card_file.read_text(encoding="utf-8"))
        input_size = int(raw["input"]["size"])
        band, thumbnail_size = _thumbnail(raw.get("thumbnail"), input_size)
        card = ModelCard(
            path=model_path,
            name=raw["name"],
            version=raw["version"],
            input_size=input_size,
            thumbnail_size=thumbnail_size,
            labels=tuple(raw["output"]["labels"]),
            threshold=float(raw["threshold"]),
            sha256=raw["sha256"],
            has_embedding=EMBEDDING_OUTPUT in raw.get("extra_outputs", {}),
            thumbnail_band=band,
            uncertain_band=_band(raw.get("uncertain"), "uncertain"),
            attributes=_attributes(raw.get("attributes")),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = error.strerror if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
        raise ModelError(f"cannot read the model card {card_file}: {reason}") from None
    actual = sha256_file(model_path)
    if actual != card.sha256:
        raise ModelError(f"{model_path} is not the model its card {card_file} describes: the file's sha256 is "
                         f"{actual}, the card says {card.sha256}")
    return card


@dataclass(frozen=True)
class Scores:
    """What one model call gives for a batch of N images. The attributes (N, labels) float32 are
    there only where the model outputs them."""

    p_cat: np.ndarray  # (N,) float64
    embedding: np.ndarray | None = None  # (N, D) float32
    attributes: Mapping[Trait, np.ndarray] = field(default_factory=dict)

    def of(self, index: int) -> dict[Trait, np.ndarray]:
        """The attributes of the batch's image `index`."""
        return {trait: probabilities[index] for trait, probabilities in self.attributes.items()}


class Classifier:
    """One onnxruntime session with one intra-op thread per call: parallelism comes from the
    classify threads calling it at once (onnxruntime's `run` is thread-safe). `model`: the
    model file's bytes, where the file itself is not at hand (a cluster worker)."""

    def __init__(self, card: ModelCard, threads: int = 1, model: bytes | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: graph-optimizer warnings mean nothing to a user
        self.card = card
        self._session = ort.InferenceSession(
            str(card.path) if model is None else model, options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        outputs = [output.name for output in self._session.get_outputs()]
        self._probabilities = PROBABILITIES_OUTPUT if PROBABILITIES_OUTPUT in outputs else outputs[0]
        self.has_embedding = EMBEDDING_OUTPUT in outputs
        # The card's attributes the graph outputs (a card may name an output the graph lacks: not used).
        self.attributes = {trait: attribute.output for trait, attribute in card.attributes.items()
                           if attribute.output in outputs}

    def p_cat(self, images: np.ndarray) -> np.ndarray:
        """Cat probability for each image of a (N, S, S, 3) uint8 batch (S: the card's input or thumbnail size)."""
        return self.scores(images, embedding=False, attributes=False).p_cat

    def scores(self, images: np.ndarray, embedding: bool = True, attributes: bool = True) -> Scores:
        """Cat probabilities and, where the model has them, embeddings and attributes, from one call."""
        wanted = [self._probabilities, *([EMBEDDING_OUTPUT] if embedding and self.has_embedding else []),
                  *(self.attributes.values() if attributes else ())]
        outputs = dict(zip(wanted, self._session.run(wanted, {self._input: images}), strict=True))
        found = outputs.get(EMBEDDING_OUTPUT)
        return Scores(outputs[self._probabilities][:, self.card.cat_index].astype(np.float64),
                      None if found is None else found.astype(np.float32),
                      {trait: outputs[name].astype(np.float32) for trait, name in self.attributes.items() if name in outputs})
