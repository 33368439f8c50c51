"""CLI: `python -m training fit ...` and `python -m training evaluate ...`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m training")
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="fine-tune, export, quantize and write the model card")
    fit.add_argument("--data", required=True, help="manifest.csv dataset or cat/ and not-cat/ folders")
    fit.add_argument("--out", default="models", help="where the int8 model, card and plots go")
    fit.add_argument("--workdir", default="runs", help="checkpoints and the fp32 model")
    fit.add_argument("--epochs", type=int, default=5)
    fit.add_argument("--batch-size", type=int, default=32)
    fit.add_argument("--lr", type=float, default=5e-4)
    fit.add_argument("--size", type=int, default=160, help="input size S of the S x S model input")
    fit.add_argument("--export-size", type=int, default=None,
                     help="input size of the exported model (default: --size); a larger one than the "
                          "training size is usually more accurate (FixRes)")
    fit.add_argument("--crop-scale", type=float, default=0.35,
                     help="smallest random-crop area as a fraction of the image; 1 trains on whole "
                          "images framed as the CLI frames them, e.g. to fine-tune an --init run at "
                          "the size it will be exported at")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--limit", type=int, default=None, help="use only N images (tiny runs)")
    fit.add_argument("--calibration", type=int, default=256, help="images for int8 calibration")
    fit.add_argument("--resume", action="store_true", help="continue from <workdir>/last.pt")
    fit.add_argument("--init", default=None, metavar="CHECKPOINT",
                     help="start from an earlier run's last.pt, e.g. a low-resolution run fine-tuned "
                          "again at a higher --size")

    ev = commands.add_parser("evaluate", help="metrics (labelled data) or predictions (unlabelled folder)")
    ev.add_argument("--model", type=Path, default=Path("models/notcat-lite0.onnx"))
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--split", choices=("all", "val"), default="all",
                    help="val: only fit's validation split (same --seed), synthetic renders included")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--threshold", type=float, default=None, help="default: the card's")
    ev.add_argument("--out", type=Path, default=None, help="write confusion and PR-curve PNGs here")

    args = parser.parse_args(argv)
    if args.command == "fit":
        import torch  # noqa: F401 - fail early with a clear message without the train extra

        from training.fit import Config, fit as run_fit

        config = Config(data=args.data, out=args.out, workdir=args.workdir, epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr, size=args.size, seed=args.seed,
                        limit=args.limit, calibration=args.calibration, resume=args.resume,
                        init=args.init, export_size=args.export_size,
                        crop_scale=args.crop_scale)
        run_fit(config, "python -m training " + shlex.join(argv))
    else:
        from training.evaluate import evaluate

        evaluate(args.model, args.data, args.split, args.seed, args.out, args.threshold)


if __name__ == "__main__":
    main()
