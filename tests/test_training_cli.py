"""`python -m training`'s own manners: help without the train extra (as in the README's runtime
install, where torch and onnx are missing) and without importing torch in the full install; every
command listed and described, every option explained. Runs the real module in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("fit", "attributes", "evaluate", "identity", "thumbnails", "uncertain", "small-cats")
NEED_TRAIN_FOR_HELP = ("fit", "attributes")  # their options' defaults come from the train extra's side
# What `pip install .` lacks (the train extra's modules): made unimportable, as they are there.
TRAIN_ONLY = ("torch", "torchvision", "timm", "sklearn", "onnx", "onnxscript", "matplotlib")


def training(*args: str, hide: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`python -m training ARGS` with the modules `hide` unimportable; prints, last, which of the train
    extra's modules it imported (when it returns normally or exits)."""
    code = (f"import sys, json, runpy; sys.modules.update(dict.fromkeys({hide!r})); sys.argv = {['training', *args]!r}\n"
            "try:\n    runpy.run_module('training', run_name='__main__', alter_sys=True)\n"
            f"finally:\n    print(json.dumps(sorted(m for m in {TRAIN_ONLY!r} if sys.modules.get(m))))")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def imported(done: subprocess.CompletedProcess[str]) -> list[str]:
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_works_without_the_train_extra_and_imports_none_of_it() -> None:
    for hide in (TRAIN_ONLY, ()):  # the runtime install; the full one
        done = training("--help", hide=hide)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "{" + ",".join(COMMANDS) + "}" in done.stdout.splitlines()[1]  # the usage line names every command
        assert "train extra" in done.stdout and imported(done) == []


def test_a_command_that_needs_the_train_extra_says_so_without_a_traceback() -> None:
    for command in NEED_TRAIN_FOR_HELP:
        done = training(command, "--help", hide=TRAIN_ONLY)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert f"python -m training {command} needs the train extra" in done.stderr
        assert "pip install -e '.[train]'" in done.stderr


def test_every_command_is_described_and_every_option_explained() -> None:
    top = training("--help", hide=TRAIN_ONLY).stdout
    for command in COMMANDS:
        assert any(line.split()[:1] == [command] and len(line.split()) > 2 for line in top.splitlines()), command
        if command in NEED_TRAIN_FOR_HELP:
            continue  # checked below with the full install
        page = training(command, "--help", hide=TRAIN_ONLY)
        assert page.returncode == 0, page.stderr
        _check_options(command, page.stdout)
    for command in NEED_TRAIN_FOR_HELP:
        _check_options(command, training(command, "--help").stdout)


def _check_options(command: str, page: str) -> None:
    assert "(default: None)" not in page and "(default: the card's) (default" not in page, page
    description = page.split("\n\n")[1]
    assert len(description.split()) > 8, f"{command} has no description"
    options = page.split("options:")[1]
    # Each option's own line(s): the flag, then its help; an option with no help ends its entry bare.
    entries = [entry for entry in options.split("\n  -")[1:]]
    bare = [entry.split()[0] for entry in entries if len(entry.split()) <= 2]
    assert bare == [], f"{command}: options without help: {bare}"
    if command == "thumbnails":
        assert "(0-1)" in options.split("--target")[1].split("\n  -")[0], "--target needs its unit"
