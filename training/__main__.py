"""CLI: `python -m training fit ...`, `python -m training evaluate ...` and `python -m training identity ...`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from training import export, finetune, prior, splits
from training.thumbnails import THUMBNAIL_INPUT

EXAMPLES = """examples:
  python -m training fit --data ../shared/datasets/catnotcat --out models/
  python -m training fit --data ../shared/datasets/catnotcat --data ~/corrections   # plus a review's corrections
  python -m training evaluate --data ../shared/datasets/catnotcat --split out-of-source
  python -m training evaluate --data ~/Photos                                      # predictions only
  python -m training identity --data runs/campus-cats     # one folder per cat: the identity head for --group-cats
"""


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m training", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Make notcat-sort's model (fit) and measure a model (evaluate). Needs the train extra: "
                    "pip install -e '.[train]'.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{fit,evaluate,identity}")

    fit = commands.add_parser(
        "fit", formatter_class=formatter, help="fit the head, export, quantize and write the model card",
        description="Run the frozen ImageNet Lite0 over every image once (cached in --workdir), compare "
                    "candidate heads, on the frozen network and on one tuned with LP-FT and ImageNet "
                    "distillation, on leave-sources-out folds, fit the winner's temperature and threshold "
                    "out of source, and write the int8 model, its card and plots to --out. About 50 "
                    "minutes on 2 cores from scratch, 30 with the cache.")
    fit.add_argument("--data", action="append", required=True, metavar="DIR",
                     help="a manifest.csv dataset or a folder with cat/ and not-cat/ (e.g. serve's corrections); "
                          "repeat to combine several")
    fit.add_argument("--out", default="models", help="where the int8 model, its card and plots go")
    fit.add_argument("--workdir", default="runs", help="cached decodes and features, and the fp32 model")
    fit.add_argument("--size", type=int, default=224, help="input size S of the S x S model input")
    fit.add_argument("--seed", type=int, default=0, help="seeds the folds and the calibration sample")
    fit.add_argument("--folds", type=int, default=splits.FOLDS, help="leave-sources-out folds")
    fit.add_argument("--rank", type=int, default=prior.DEFAULT_RANK,
                     help="rank kept of the 987 non-cat ImageNet classifier rows (model size)")
    fit.add_argument("--limit", type=int, default=None, help="use only N images (tiny runs, tests)")
    fit.add_argument("--synthetic", type=int, default=1900, help="synthetic negatives to render")
    fit.add_argument("--calibration", type=int, default=export.CALIBRATION_IMAGES, help="images for int8 calibration")
    fit.add_argument("--finetune-epochs", type=int, default=finetune.Recipe.epochs,
                     help="epochs of the LP-FT + distillation variants (0: compare frozen heads only)")
    fit.add_argument("--finetune-stage", type=int, default=finetune.Recipe.stage,
                     help="tune the EfficientNet stages from this one on (0-6), with the head convolution")
    fit.add_argument("--finetune-lr", type=float, default=finetune.Recipe.lr, help="AdamW learning rate")
    fit.add_argument("--distillation", type=float, default=finetune.Recipe.distillation,
                     help="weight of the ImageNet teacher's KL term against the cat / not-cat loss")

    ev = commands.add_parser(
        "evaluate", formatter_class=formatter, help="metrics on labelled data, or predictions for a folder",
        description="Labelled data (manifest.csv, or cat/ and not-cat/): metrics per group. --split "
                    "out-of-source or in-source reproduce the card's figures from the model file. Any other "
                    "folder: one line per image, path, p_cat and label.")
    ev.add_argument("--model", type=Path, default=Path("models/notcat-lite0.onnx"), help="the ONNX model (card beside it)")
    ev.add_argument("--data", type=Path, action="append", required=True, metavar="DIR",
                    help="dataset or folder; repeat as given to fit")
    ev.add_argument("--split", choices=("all", "out-of-source", "in-source"), default="all",
                    help="all: every image with the shipped head; out-of-source / in-source: fit's folds")
    ev.add_argument("--threshold", type=float, default=None, help="cat from this p_cat on (default: the card's)")
    ev.add_argument("--out", type=Path, default=None, help="write confusion and PR-curve PNGs here")

    ident = commands.add_parser(
        "identity", formatter_class=formatter, help="train and evaluate the identity head for --group-cats",
        description="A linear projection of the model's embedding, trained with a batch-hard triplet loss; "
                    "prints 1-NN accuracy across sessions and the clusters' pairwise precision and recall on "
                    "cats held out (folds by cat), for the raw embedding and the head (training/identity.py).")
    ident.add_argument("--data", type=Path, required=True, help="one folder per cat (NekoNet's layout)")
    ident.add_argument("--model", type=Path, default=Path("models/notcat-lite0.onnx"), help="the ONNX model (card beside it)")
    ident.add_argument("--out", type=Path, default=None, help="write the head trained on all the data (.npz) here")
    ident.add_argument("--folds", type=int, default=4, help="validation folds, by cat")
    ident.add_argument("--dimensions", type=int, default=128)
    ident.add_argument("--steps", type=int, default=600)
    ident.add_argument("--seed", type=int, default=0)

    thumbs = commands.add_parser("thumbnails", help="choose the EXIF-thumbnail band and write it into the card")
    thumbs.add_argument("--model", type=Path, default=Path("models/notcat-lite0.onnx"))
    thumbs.add_argument("--data", type=Path, required=True, help="its out-of-source photos are used")
    thumbs.add_argument("--target", type=float, default=0.999, help="least agreement with full decoding")
    thumbs.add_argument("--limit", type=int, default=None, help="use only N of the photos, a seeded sample (tiny runs)")
    thumbs.add_argument("--size", type=int, default=THUMBNAIL_INPUT,
                        help="classify a thumbnail squashed to SIZE x SIZE px (the model takes any size)")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.command == "identity":
        from training.identity import run as run_identity

        run_identity(args.data, args.model, args.out, args.folds, args.dimensions, args.steps, args.seed)
    elif args.command == "fit":
        import torch  # noqa: F401 - fail early with a clear message without the train extra

        from training.fit import Config
        from training.fit import fit as run_fit

        config = Config(data=args.data, out=args.out, workdir=args.workdir, size=args.size, seed=args.seed,
                        folds=args.folds, rank=args.rank, limit=args.limit, synthetic=args.synthetic,
                        calibration=args.calibration, finetune_epochs=args.finetune_epochs,
                        finetune_stage=args.finetune_stage, finetune_lr=args.finetune_lr,
                        distillation=args.distillation)
        run_fit(config, "python -m training " + shlex.join(argv))
    elif args.command == "thumbnails":
        from training.data import limit, load_items
        from training.thumbnails import choose_for_model, out_of_source, write_band

        photos = limit(out_of_source(load_items(args.data)), args.limit, seed=0)
        band = choose_for_model(args.model, photos, args.target, args.size)
        print(f"{write_band(args.model, band)}: thumbnail band {band.low}:{band.high} at {band.size} px, thumbnail decides "
              f"{band.thumbnail_share:.1%} of {band.photos} photos, agreement {band.agreement:.4%}")
    else:
        from training.evaluate import evaluate

        evaluate(args.model, args.data, args.split, args.out, args.threshold)


if __name__ == "__main__":
    main()
