"""End-to-end throughput benchmark of `notcat-sort` against a naive baseline.

    python benchmarks/throughput.py [--quick] [--profile] [--only-fast-path | --only-group-cats | --only-heads]

The corpus is made from the photos in ../shared and kept in tmp/benchmarks between runs:

* camera-sized (4000x3000, ~12 MP) and web-sized (1200x900, ~1 MP) JPEGs: the largest
  ../shared photos, turned upright, randomly cropped and mirrored, upscaled with LANCZOS, given
  mild Gaussian grain (so they do not compress unrealistically well), saved at quality 90 with
  an EXIF orientation tag (1, 6, 8 or 3; the pixels are stored rotated to match, as a camera
  does). A few distinct images are encoded per size; the files are copies of them with a unique
  trailer after the JPEG end marker, so every file has its own content hash.
* web-sized cat photos (1200x900), made as above from the largest catnotcat cat photos
  (Oxford-IIIT Pet cats, up to 512 px, upscaled), for --copy with and without --group-cats:
  the ../shared photos above hold no cat, so with them there would be nothing to group.
* camera JPEGs with EXIF thumbnails (4000x3000), made as above and given a 160x120 IFD1
  thumbnail as a camera makes one (training/thumbnails.py), for the fast path: images/s with it
  and with --full-decode, the share of photos the thumbnail decided, and the agreement of the
  two runs' labels on every file. The fast path needs a `thumbnail` band in the model card
  (`python -m training thumbnails`); pass --model for a model whose card has one.
* the same web-sized cat photos, report only, with the model (its breed and mood heads, computed in
  the same call as p_cat) and with that model stripped of the heads' outputs (onnxruntime then
  prunes the heads' nodes): the heads' cost, as the ratio of the two rates within each repeat.
* small-file trees (the labelled catnotcat images, 32-512 px, likewise made unique) for the
  memory and cached re-run measurements.

Every measurement is a subprocess timed end to end, from its start to its exit: the installed
`notcat-sort` (XDG_CACHE_HOME in a temporary folder; throughput runs pass --no-cache) and the
naive baseline, benchmarks/naive_baseline.py, over the same files. The VM this runs on changes
speed by up to a third from one minute to the next, so each throughput measurement is repeated
(--repeats, interleaved: report-only, --copy, baseline, then again) and the median is printed;
the speed-up is the median of the ratios within each repeat, whose runs are a few seconds
apart. Peak memory is the summed RSS of the process and any descendants, sampled from /proc.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/, for the camera-style thumbnail
from notcat_sort.model import default_model_path, load_card
from training.thumbnails import camera_thumbnail

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = REPO / "tmp" / "benchmarks"
CLI = Path(sys.executable).parent / "notcat-sort"

# Targets from the issue, for a 2-core machine.
TARGET_12MP = 25.0  # images/s
TARGET_1MP = 100.0  # images/s
TARGET_VS_BASELINE = 3.0
TARGET_PEAK_RSS = 1 << 30  # bytes
TARGET_CACHED_SPEEDUP = 20.0
TARGET_GROUP_CATS_SLOWDOWN = 0.05  # --group-cats at most this much slower
TARGET_HEADS_SLOWDOWN = 0.03  # the breed and mood heads: sorting at most this much slower (issue 26)
TARGET_FAST_PATH = 150.0  # images/s on 12 MP camera JPEGs with EXIF thumbnails
TARGET_FAST_AGREEMENT = 0.999
PROFILE_FILES = 60  # per size, for --profile

# EXIF orientation -> how to store an upright picture so that a viewer applying the tag shows it upright.
_STORE_FOR_ORIENTATION = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


# ---------------------------------------------------------------------------------------------
# Corpus


def _source_photos() -> list[Path]:
    """The largest well-formed photos in ../shared (at least 2 MP), largest first."""
    folders = [SHARED / "samples" / "camera", SHARED / "samples" / "camera" / "mobile",
               SHARED / "samples" / "camera" / "hdr"]
    found = []
    for path in [p for folder in folders for p in sorted(folder.glob("*.jpg"))] + [
        SHARED / "samples" / "orientation" / "Landscape_1.jpg", SHARED / "samples" / "orientation" / "Portrait_1.jpg"
    ]:
        if path.name == "corrupted.jpg":
            continue
        try:
            with Image.open(path) as image:
                image.load()
                if image.width * image.height >= 2_000_000:
                    found.append((image.width * image.height, path))
        except Exception:  # noqa: BLE001 - malformed samples are simply not sources
            continue
    if not found:
        sys.exit(f"no source photos found under {SHARED / 'samples'}")
    return [path for _, path in sorted(found, reverse=True)]


def _cat_photos() -> list[Path]:
    """The largest cat photos of the catnotcat pool (Oxford-IIIT Pet cats, up to 512 px), largest first."""
    found = []
    for path in sorted((SHARED / "datasets" / "catnotcat" / "cat").glob("oxford-full-cat-*.jpg")):
        with Image.open(path) as image:
            found.append((image.width * image.height, path))
    if not found:
        sys.exit(f"no cat photos found under {SHARED / 'datasets' / 'catnotcat'}")
    return [path for _, path in sorted(found, reverse=True)]


def _make_photo(source: Path, size: tuple[int, int], orientation: int, rng: random.Random) -> Image.Image:
    """A realistic camera-style picture of `size` (stored pixels) made from `source`."""
    with Image.open(source) as opened:
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    upright_size = size if orientation in (1, 3) else (size[1], size[0])
    target_ratio = upright_size[0] / upright_size[1]
    scale = rng.uniform(0.8, 1.0)
    crop_w = min(picture.width, int(picture.height * target_ratio)) * scale
    crop_h = crop_w / target_ratio
    left = rng.uniform(0, picture.width - crop_w)
    top = rng.uniform(0, picture.height - crop_h)
    picture = picture.resize(upright_size, Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    grain = np.random.default_rng(rng.getrandbits(32)).normal(0, 4, (upright_size[1], upright_size[0], 1))
    pixels = np.clip(np.asarray(picture, dtype=np.float32) + grain.astype(np.float32), 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels)
    store = _STORE_FOR_ORIENTATION[orientation]
    return picture.transpose(store) if store is not None else picture


def _unique_copies(bases: list[Path], folder: Path, count: int, prefix: str) -> list[Path]:
    """`count` files cycling through `bases`, each with a unique trailer after the JPEG data."""
    folder.mkdir(parents=True, exist_ok=True)
    blobs = [base.read_bytes() for base in bases]
    files = []
    for index in range(count):
        path = folder / f"{prefix}{index:06d}.jpg"
        if not path.exists():
            partial = path.with_name(f".{path.name}.partial")
            partial.write_bytes(blobs[index % len(blobs)] + f"notcat-benchmark-{prefix}{index}".encode())
            partial.rename(path)
        files.append(path)
    return files


def _exif_with_thumbnail(orientation: int, thumbnail: bytes) -> bytes:
    """A camera's EXIF block: IFD0 (Make, Orientation) and IFD1 holding the thumbnail JPEG."""
    make = b"notcat-benchmark\x00"
    ifd1 = 8 + 30 + len(make) + (len(make) % 2)
    ifd0 = struct.pack("<H", 2) + struct.pack("<HHII", 0x010F, 2, len(make), 38) \
        + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", ifd1)
    data_at = ifd1 + 2 + 3 * 12 + 4
    ifd1_bytes = struct.pack("<H", 3) + struct.pack("<HHIHH", 0x0103, 3, 1, 6, 0) \
        + struct.pack("<HHII", 0x0201, 4, 1, data_at) + struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail)) \
        + struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd0 + make + b"\x00" * (len(make) % 2) + ifd1_bytes + thumbnail
    return b"Exif\x00\x00" + tiff


def photo_corpus(name: str, size: tuple[int, int], distinct: int, count: int, thumbnails: bool = False,
                 cats: bool = False) -> Path:
    """tmp/benchmarks/<name>/ holding `count` JPEGs of `size`, from `distinct` encoded pictures
    (with `thumbnails`, each with an EXIF thumbnail made as a camera makes it; with `cats`, made
    from cat photos, upscaled)."""
    root = CORPUS / name
    bases_folder = CORPUS / f"{name}-bases"
    bases_folder.mkdir(parents=True, exist_ok=True)
    sources = _cat_photos() if cats else _source_photos()
    orientations = list(_STORE_FOR_ORIENTATION)
    bases = []
    for index in range(distinct):
        base = bases_folder / f"base{index:03d}.jpg"
        if not base.exists():
            rng = random.Random(f"{name}-{index}")
            orientation = orientations[index % len(orientations)]
            picture = _make_photo(sources[index % len(sources)], size, orientation, rng)
            exif = Image.Exif()
            exif[0x0112] = orientation
            exif[0x010F] = "notcat-benchmark"  # Make
            partial = base.with_name(f".{base.name}.partial")
            picture.save(partial, "JPEG", quality=90, exif=exif)
            if thumbnails:
                thumbnail, _ = camera_thumbnail(partial)
                picture.save(partial, "JPEG", quality=90, exif=_exif_with_thumbnail(orientation, thumbnail))
            partial.rename(base)
        bases.append(base)
    return _unique_copies(bases, root, count, "IMG_")[0].parent


def small_corpus(name: str, count: int) -> Path:
    """tmp/benchmarks/<name>/ holding `count` small real photos (catnotcat, 32-512 px), in folders of 1,000."""
    root = CORPUS / name
    dataset = sorted((SHARED / "datasets" / "catnotcat").glob("*/*.jpg"))
    if not dataset:
        sys.exit(f"no images under {SHARED / 'datasets' / 'catnotcat'}")
    for start in range(0, count, 1000):
        chunk = range(start, min(start + 1000, count))
        folder = root / f"{start // 1000:03d}"
        _unique_copies([dataset[i % len(dataset)] for i in chunk], folder, len(chunk), f"p{start:06d}-")
    return root


# ---------------------------------------------------------------------------------------------
# Measuring


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    parent = int(handle.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def _process_tree_rss(root_pid: int) -> int:
    """Summed resident memory (bytes) of `root_pid` and all its descendants, from /proc."""
    total = 0
    for pid in [root_pid, *descendants(root_pid)]:
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass
class Run:
    files: int
    seconds: float
    cpu_seconds: float  # user + system, all processes: what a busy machine cannot hide
    peak_rss: int

    @property
    def rate(self) -> float:
        return self.files / self.seconds

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.cpu_seconds / self.files


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant: the CLI and anything it started
    return usage.ru_utime + usage.ru_stime


CLI_OPTIONS: list[str] = []  # set from the command line, e.g. --model
BASELINE = Path(__file__).resolve().parent / "naive_baseline.py"


def run_process(command: list[str], files: int, cache_home: Path) -> Run:
    """Time one subprocess from start to exit, sampling its process tree's memory."""
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "XDG_CACHE_HOME": str(cache_home)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.1):
            peak = max(peak, _process_tree_rss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, errors = process.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({process.returncode}):\n{errors[-2000:]}")
    return Run(files, seconds, _children_cpu_seconds() - cpu_before, peak)


def run_cli(arguments: list[str], files: int, cache_home: Path) -> Run:
    return run_process([str(CLI), *arguments, *CLI_OPTIONS, "--quiet"], files, cache_home)


def run_baseline(folder: Path, files: int, model: Path, cache_home: Path) -> Run:
    size = load_card(default_model_path()).input_size  # what the CLI feeds the model
    return run_process([sys.executable, str(BASELINE), str(model), str(folder), str(size)], files, cache_home)


def profile_pipeline(files: list[Path], out: Path, model: Path | None, copy: bool = True) -> None:
    """cProfile one in-process run with one job (`copy`: --copy, else report only), and say where
    the time goes, per file."""
    import cProfile
    import pstats

    import onnxruntime

    from notcat_sort.actions import Action
    from notcat_sort.classify import ClassifySettings
    from notcat_sort.decide import Policy
    from notcat_sort.model import default_model_path, load_card
    from notcat_sort.pipeline import SortSettings, sort_files
    from notcat_sort.report import ReportWriter
    from notcat_sort.scan import Candidate

    onnxruntime.set_default_logger_severity(3)  # no graph-optimizer chatter in the printout
    card = load_card(model or default_model_path())
    settings = SortSettings(ClassifySettings(card, jobs=1), Policy(card.threshold, None),
                            action=Action.COPY if copy else None, out=out)
    report = ReportWriter(out / "report.csv")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in sort_files([Candidate(path, path.parent) for path in files], settings, report):
        pass
    report.close()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]  # (file, line, function) -> (calls, primitive, own, cumulative, callers)
    total = sum(own for _, _, own, _, _ in stats.values())

    def cumulative(file_part: str, function: str) -> float:
        return sum(row[3] for (file, _, name), row in stats.items() if name == function and file_part in file)

    # The hashing itself: OpenSSL's own time, whether fed a whole file or the blocks of a stream.
    sha256 = sum(row[2] for (_, _, name), row in stats.items()
                 if "openssl_sha256" in name or name in ("<method 'update' of '_hashlib.HASH' objects>",
                                                         "<method 'hexdigest' of '_hashlib.HASH' objects>"))
    thumbnail = cumulative("notcat_sort/classify.py", "_thumbnail")
    parts = {
        "read files (open, stat, read)": cumulative("notcat_sort/classify.py", "_read") - thumbnail - sha256,
        "sha256": sha256,
        "EXIF thumbnail (find, decode, resize)": thumbnail,
        "decode the image (draft + resize + rotate)": cumulative("notcat_sort/classify.py", "_model_input"),
        "inference (onnxruntime)": cumulative("notcat_sort/model.py", "scores"),
        "file actions, main thread (plan, journal)": sum(
            cumulative("notcat_sort/pipeline.py", name) for name in ("_plan", "_execute", "_companions", "_carry", "_tag")),
        # Copies run on the pipeline's action threads, which cProfile does not see; what shows is
        # the main thread blocked until they finish (their CPU cost: the --copy rows above).
        "waiting for the copies (action threads)": sum(
            row[2] for (_, _, name), row in stats.items() if "acquire" in name and "_thread.lock" in name),
        "report (CSV journal, fsync)": cumulative("notcat_sort/report.py", "write"),
    }
    print(f"  {files[0].parent.name}: {len(files)} files, one process, {'--copy' if copy else 'report only'}: "
          f"{total:.2f} s ({1000 * total / len(files):.1f} ms per file)")
    for name, seconds in parts.items():
        print(f"    {name:42s} {1000 * seconds / len(files):7.2f} ms  {100 * seconds / total:5.1f} %")
    rest = total - sum(parts.values())
    print(f"    {'everything else':42s} {1000 * rest / len(files):7.2f} ms  {100 * rest / total:5.1f} %")


# ---------------------------------------------------------------------------------------------
# Report


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda run: run.rate)[len(runs) // 2]


def throughput_section(title: str, folder: Path, count: int, jobs: int, baseline_model: Path,
                       repeats: int, target: float, work: Path) -> list[bool]:
    files = sorted(folder.glob("*.jpg"))[:count]
    view = work / f"{folder.name}-view"  # exactly `count` files, as hard links
    view.mkdir()
    for path in files:
        os.link(path, view / path.name)
    print(f"\n{title}: {len(files)} files, {sum(p.stat().st_size for p in files) / len(files) / 1e6:.1f} MB each on average, "
          f"median of {repeats} run{'s' if repeats > 1 else ''}")
    cache_home = work / "unused-cache"
    sorted_folder = work / f"{folder.name}-sorted"
    report_only, copied, baseline = [], [], []
    for repeat in range(repeats):
        common = [str(view), "--no-cache", "-j", str(jobs)]
        report_only.append(run_cli([*common, "--report", str(work / f"r{repeat}.csv")], len(files), cache_home))
        shutil.rmtree(sorted_folder, ignore_errors=True)  # every --copy run starts from nothing sorted
        copied.append(run_cli([*common, "--copy", "--out", str(sorted_folder), "--report", str(work / f"c{repeat}.csv")],
                              len(files), cache_home))
        baseline.append(run_baseline(view, len(files), baseline_model, cache_home))
    ratio = statistics.median(ours.rate / naive.rate for ours, naive in zip(report_only, baseline, strict=True))
    classify_only, copy, naive = _median_run(report_only), _median_run(copied), _median_run(baseline)
    for name, run, runs in [("notcat-sort (report only)", classify_only, report_only), ("notcat-sort --copy", copy, copied)]:
        print(f"  {name:27s} {run.rate:7.1f} images/s  ({run.seconds:.1f} s, {run.cpu_ms_per_image:.0f} CPU ms/image, "
              f"peak RSS {run.peak_rss / 2**20:.0f} MiB)   target >= {target:.0f}: {verdict(run.rate >= target)}"
              f"   runs: {', '.join(f'{r.rate:.1f}' for r in runs)}")
    print(f"  {'naive baseline':27s} {naive.rate:7.1f} images/s  ({naive.seconds:.1f} s, {naive.cpu_ms_per_image:.0f} CPU ms/image)"
          f"   runs: {', '.join(f'{r.rate:.1f}' for r in baseline)}")
    print(f"  speed-up over naive         {ratio:7.1f} x   target >= {TARGET_VS_BASELINE:.0f}x: {verdict(ratio >= TARGET_VS_BASELINE)}"
          f"   (CPU per image: {naive.cpu_ms_per_image / classify_only.cpu_ms_per_image:.1f}x less)")
    return [classify_only.rate >= target, copy.rate >= target, ratio >= TARGET_VS_BASELINE]


def _linked_view(folder: Path, count: int, view: Path) -> tuple[list[Path], Path]:
    """The first `count` photos of `folder`, hard-linked into the new folder `view`: a run over exactly those."""
    files = sorted(folder.glob("*.jpg"))[:count]
    view.mkdir()
    for path in files:
        os.link(path, view / path.name)
    return files, view


def group_cats_section(folder: Path, count: int, jobs: int, repeats: int, work: Path) -> list[bool]:
    """--copy with and without --group-cats over the same 1 MP cat photos (every one embedded and
    grouped: the worst case), interleaved; the slowdown is the median of the ratios within each repeat."""
    files, view = _linked_view(folder, count, work / f"{folder.name}-group-view")
    print(f"\n--group-cats: {len(files)} files of {folder.name}, --copy --no-cache, median of {repeats}")
    plain: list[Run] = []
    grouped: list[Run] = []
    for repeat in range(repeats):
        for runs, extra in ((plain, []), (grouped, ["--group-cats"])):
            out = work / f"group-sorted-{len(extra)}"
            shutil.rmtree(out, ignore_errors=True)
            runs.append(run_cli([str(view), "--no-cache", "-j", str(jobs), "--copy", "--out", str(out), *extra,
                                 "--report", str(work / f"g{len(extra)}-{repeat}.csv")], len(files), work / "unused-cache"))
    slowdown = statistics.median(1 - with_groups.rate / without.rate for without, with_groups in zip(plain, grouped, strict=True))
    for name, runs in (("--copy", plain), ("--copy --group-cats", grouped)):
        run = _median_run(runs)
        print(f"  {name:27s} {run.rate:7.1f} images/s  ({run.seconds:.1f} s)   runs: {', '.join(f'{r.rate:.1f}' for r in runs)}")
    ok = slowdown < TARGET_GROUP_CATS_SLOWDOWN
    print(f"  --group-cats slowdown       {100 * slowdown:7.1f} %   target < {100 * TARGET_GROUP_CATS_SLOWDOWN:.0f} %: {verdict(ok)}")
    return [ok]


def heads_section(folder: Path, count: int, jobs: int, repeats: int, work: Path, model: Path) -> list[bool]:
    """Report-only runs with `model` (which has breed and mood heads) and with the same model without
    their outputs, interleaved; the slowdown is the median of the ratios within each repeat."""
    # The helper that strips the heads, shared with the tests; it uses the training package's own graph surgery
    # (needs onnx, the train extra).
    sys.path[:0] = [str(REPO / "tests"), str(REPO)]
    from attribute_models import without_heads

    if not load_card(model).attributes:
        sys.exit(f"{model}'s card lists no attributes (breeds, mood): pass --model for a model with heads")
    plain = without_heads(model, work / "without-heads" / model.name)
    files, view = _linked_view(folder, count, work / f"{folder.name}-heads-view")
    print(f"\nbreed and mood heads: {len(files)} files of {folder.name}, report only, --no-cache, median of {repeats}")
    runs: dict[str, list[Run]] = {"with heads": [], "without heads": []}
    for repeat in range(repeats):
        for name, chosen in (("without heads", plain), ("with heads", model)):
            runs[name].append(run_process([str(CLI), str(view), "--no-cache", "-j", str(jobs), "--model", str(chosen),
                                           "--report", str(work / f"h-{repeat}-{len(name)}.csv"), "--quiet"],
                                          len(files), work / "unused-cache"))
    ratio = statistics.median(heads.rate / bare.rate
                              for heads, bare in zip(runs["with heads"], runs["without heads"], strict=True))
    for name, found in runs.items():
        run = _median_run(found)
        print(f"  {name:27s} {run.rate:7.1f} images/s  ({run.seconds:.1f} s, {run.cpu_ms_per_image:.1f} CPU ms/image)"
              f"   runs: {', '.join(f'{r.rate:.1f}' for r in found)}")
    ok = 1 - ratio < TARGET_HEADS_SLOWDOWN
    print(f"  with / without heads        {ratio:7.3f}     slowdown {100 * (1 - ratio):.1f} %, "
          f"target < {100 * TARGET_HEADS_SLOWDOWN:.0f} %: {verdict(ok)}")
    return [ok]


def _labels(report: Path) -> dict[str, tuple[str, str]]:
    with open(report, newline="", encoding="utf-8") as handle:
        return {row["path"]: (row["label"], row["source"]) for row in csv.DictReader(handle)}


def fast_path_section(folder: Path, count: int, jobs: int, repeats: int, work: Path) -> list[bool]:
    """The EXIF-thumbnail fast path against --full-decode, on camera JPEGs with thumbnails."""
    files = sorted(folder.glob("*.jpg"))[:count]
    view = work / f"{folder.name}-view"
    view.mkdir()
    for path in files:
        os.link(path, view / path.name)
    model = Path(CLI_OPTIONS[1]) if CLI_OPTIONS else default_model_path()
    band = load_card(model).thumbnail_band
    print(f"\ncamera JPEGs with EXIF thumbnails, 4000x3000 (12 MP): {len(files)} files, median of {repeats} "
          f"run{'s' if repeats > 1 else ''}, thumbnail band {band or 'none in the card: the fast path is off'}")
    one = work / f"{folder.name}-one"  # start-up: the same command over one of the files
    one.mkdir()
    os.link(files[0], one / files[0].name)
    fast, full, start = [], [], []
    for repeat in range(repeats):
        common = [str(view), "--no-cache", "-j", str(jobs)]
        fast.append(run_cli([*common, "--report", str(work / f"fast{repeat}.csv")], len(files), work / "unused-cache"))
        full.append(run_cli([*common, "--full-decode", "--report", str(work / f"full{repeat}.csv")], len(files),
                            work / "unused-cache"))
        start.append(run_cli([str(one), "--no-cache", "-j", str(jobs), "--report", str(work / f"one{repeat}.csv")], 1,
                             work / "unused-cache"))
    fast_labels, full_labels = _labels(work / "fast0.csv"), _labels(work / "full0.csv")
    agreement = sum(fast_labels[path][0] == full_labels[path][0] for path in full_labels) / len(full_labels)
    share = sum(source == "thumbnail" for _, source in fast_labels.values()) / len(fast_labels)
    ratio = statistics.median(a.rate / b.rate for a, b in zip(fast, full, strict=True))
    quick, slow = _median_run(fast), _median_run(full)
    print(f"  {'fast path (default)':27s} {quick.rate:7.1f} images/s  ({quick.seconds:.1f} s, {quick.cpu_ms_per_image:.0f} "
          f"CPU ms/image)   target >= {TARGET_FAST_PATH:.0f}: {verdict(quick.rate >= TARGET_FAST_PATH)}"
          f"   runs: {', '.join(f'{r.rate:.1f}' for r in fast)}")
    print(f"  {'--full-decode':27s} {slow.rate:7.1f} images/s  ({slow.seconds:.1f} s, {slow.cpu_ms_per_image:.0f} "
          f"CPU ms/image)   runs: {', '.join(f'{r.rate:.1f}' for r in full)}")
    print(f"  fast path / --full-decode   {ratio:7.1f} x")
    started = _median_run(start)
    print(f"  start-up (a run over 1 file) {started.seconds:6.2f} s   ({started.cpu_seconds:.2f} CPU s: imports, model, "
          f"one photo; {100 * started.seconds / quick.seconds:.0f} % of the fast path's run)")
    print(f"  decided by the thumbnail    {share:7.1%}")
    print(f"  labels agreeing             {agreement:7.2%}   target >= {TARGET_FAST_AGREEMENT:.1%}: "
          f"{verdict(agreement >= TARGET_FAST_AGREEMENT)}   ({len(full_labels)} files)")
    return [quick.rate >= TARGET_FAST_PATH, agreement >= TARGET_FAST_AGREEMENT]


def library_section(files: int, jobs: int, work: Path) -> list[bool]:
    """Memory of a first `--copy --out` run over a large tree, then the same command again."""
    tree = small_corpus(f"tree-{files}", files)
    view = work / "library"
    subprocess.run(["cp", "-al", str(tree), str(view)], check=True)  # hard links: same inodes, no data copied
    cache_home = work / "xdg-cache"
    command = [str(view), "-j", str(jobs), "--copy", "--out", str(work / "library-sorted")]
    first = run_cli([*command, "--report", str(work / "first.csv")], files, cache_home)
    again = run_cli([*command, "--report", str(work / "again.csv")], files, cache_home)
    speedup = first.seconds / again.seconds
    print(f"\nlibrary of {files} small photos (catnotcat, 32-512 px), --copy --out, with the cache")
    print(f"  first run                   {first.rate:7.1f} images/s  ({first.seconds:.1f} s, {first.cpu_seconds:.1f} CPU s)")
    print(f"  peak RSS of the CLI         {first.peak_rss / 2**20:7.0f} MiB   target < {TARGET_PEAK_RSS / 2**20:.0f} MiB: "
          f"{verdict(first.peak_rss < TARGET_PEAK_RSS)}")
    print(f"  cached re-run               {again.rate:7.1f} images/s  ({again.seconds:.2f} s, {again.cpu_seconds:.1f} CPU s, "
          f"peak RSS {again.peak_rss / 2**20:.0f} MiB)")
    print(f"  re-run speed-up             {speedup:7.1f} x   target >= {TARGET_CACHED_SPEEDUP:.0f}x: "
          f"{verdict(speedup >= TARGET_CACHED_SPEEDUP)}")
    return [first.peak_rss < TARGET_PEAK_RSS, speedup >= TARGET_CACHED_SPEEDUP]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run (sizes below are divided down)")
    parser.add_argument("--camera-files", type=int, default=240, help="12 MP JPEGs to sort")
    parser.add_argument("--web-files", type=int, default=800, help="1 MP JPEGs to sort")
    parser.add_argument("--thumbnail-files", type=int, default=1000,
                        help="12 MP JPEGs with EXIF thumbnails (a card's worth: start-up is printed apart)")
    parser.add_argument("--only-fast-path", action="store_true", help="measure only the EXIF-thumbnail fast path")
    parser.add_argument("--only-group-cats", action="store_true", help="measure only --copy with and without --group-cats")
    parser.add_argument("--only-heads", action="store_true",
                        help="measure only the breed and mood heads: the model with them against it without them")
    parser.add_argument("--library-files", type=int, default=20_000,
                        help="small files in the memory / cached re-run tree")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each throughput measurement (median printed)")
    parser.add_argument("--baseline-model", type=Path, default=REPO / "models" / "notcat-lite0-fp32.onnx",
                        help="fp32 ONNX model for the naive baseline")
    parser.add_argument("--model", type=Path, help="notcat-sort --model (default: the shipped model)")
    parser.add_argument("-j", "--jobs", type=int, default=len(os.sched_getaffinity(0)), help="notcat-sort --jobs")
    parser.add_argument("--profile", action="store_true", help="also cProfile an in-process run and break the time down")
    args = parser.parse_args()
    if args.quick:  # smaller sizes, except those given explicitly
        quick = {"camera_files": 40, "web_files": 120, "thumbnail_files": 60, "library_files": 2000, "repeats": 1}
        for name, value in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if args.model:
        CLI_OPTIONS.extend(["--model", str(args.model.resolve())])
    if not args.baseline_model.is_file():
        sys.exit(f"baseline model not found: {args.baseline_model} (pass --baseline-model)")
    if not CLI.exists():
        sys.exit(f"notcat-sort is not installed beside {sys.executable}")

    print(f"building/reusing the corpus in {CORPUS} ...", flush=True)
    model = (args.model or default_model_path()).resolve()
    if args.only_group_cats or args.only_heads:
        web_cats = photo_corpus("web-1mp-cats", (1200, 900), 48 if not args.quick else 12, args.web_files, cats=True)
        with tempfile.TemporaryDirectory(prefix="notcat-bench-") as temporary:
            checks = (group_cats_section(web_cats, args.web_files, args.jobs, args.repeats, Path(temporary))
                      if args.only_group_cats else
                      heads_section(web_cats, args.web_files, args.jobs, args.repeats, Path(temporary), model))
        print(f"\n{sum(checks)} of {len(checks)} targets met" + ("" if all(checks) else " (see FAIL above)"))
        return
    pictures = 48 if not args.quick else 6  # distinct ones: how many the band's edges can fall between
    with_thumbnails = photo_corpus(f"camera-12mp-thumbnails-{pictures}", (4000, 3000), pictures,
                                   args.thumbnail_files, thumbnails=True)
    if not args.only_fast_path:
        camera = photo_corpus("camera-12mp", (4000, 3000), 16 if not args.quick else 6, args.camera_files)
        web = photo_corpus("web-1mp", (1200, 900), 48 if not args.quick else 12, args.web_files)
        web_cats = photo_corpus("web-1mp-cats", (1200, 900), 48 if not args.quick else 12, args.web_files, cats=True)
    print(f"cores: {len(os.sched_getaffinity(0))}, notcat-sort -j {args.jobs} --model {args.model or 'shipped'}, "
          f"baseline model: {args.baseline_model}")
    checks = []
    with tempfile.TemporaryDirectory(prefix="notcat-bench-") as temporary:
        work = Path(temporary)
        checks += fast_path_section(with_thumbnails, args.thumbnail_files, args.jobs, args.repeats, work)
        if args.profile:
            print("\nwhere the time goes on the fast path (cProfile, report only)")
            out = work / "profile-fast-path"
            out.mkdir()
            profile_pipeline(sorted(with_thumbnails.glob("*.jpg"))[:PROFILE_FILES], out, args.model, copy=False)
        if args.only_fast_path:
            print(f"\n{sum(checks)} of {len(checks)} targets met" + ("" if all(checks) else " (see FAIL above)"))
            return
        checks += throughput_section("camera JPEGs, 4000x3000 (12 MP)", camera, args.camera_files, args.jobs,
                                     args.baseline_model, args.repeats, TARGET_12MP, work)
        checks += throughput_section("web JPEGs, 1200x900 (1 MP)", web, args.web_files, args.jobs,
                                     args.baseline_model, args.repeats, TARGET_1MP, work)
        checks += group_cats_section(web_cats, args.web_files, args.jobs, args.repeats, work)
        if load_card(model).attributes:
            checks += heads_section(web_cats, args.web_files, args.jobs, args.repeats, work, model)
        checks += library_section(args.library_files, args.jobs, work)
        if args.profile:
            print("\nwhere the time goes (cProfile)")
            for folder in (camera, web):
                out = work / f"profile-{folder.name}"
                out.mkdir()
                profile_pipeline(sorted(folder.glob("*.jpg"))[:PROFILE_FILES], out, args.model)
    print(f"\n{sum(checks)} of {len(checks)} targets met" + ("" if all(checks) else " (see FAIL above)"))


if __name__ == "__main__":
    main()
