"""The README's first command, run as written, in a fresh virtual environment: `pip install .`
(a real wheel, not editable) gives a `notcat-sort` that works from any folder, with its model,
and without torch.

Slow (it builds and installs the package); deselect with `-m "not slow"`. CI runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    """The commands of the README's first two ```bash blocks, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.DOTALL)
    return [block.split("#")[0].strip() for block in blocks[:2]]


def test_readme_starts_with_install_and_test_commands() -> None:
    install_and_run, run_tests = readme_commands()
    assert install_and_run.startswith("pip install . && notcat-sort ")
    assert run_tests == "bash .ci/run"
    assert "pytest" in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_install_command_works_in_a_fresh_venv_without_torch(tmp_path: Path, shared: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    home = tmp_path / "home"  # `~/Photos` in the README is this one
    photos = home / "Photos"
    (photos / "2021").mkdir(parents=True)
    for number, image in enumerate(sorted((shared / "datasets" / "catnotcat" / "cat").glob("petimages-*.jpg"))[:3]):
        shutil.copyfile(image, photos / ("2021" if number else "") / image.name)
    environment = {
        **{key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")},
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",  # as after `source venv/bin/activate`
        "HOME": str(home),
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
    }
    install_and_run = readme_commands()[0]

    done = subprocess.run(["bash", "-c", install_and_run], cwd=REPO, env=environment, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=1200)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 files in " in done.stderr and "failed: 0" in done.stderr

    def in_venv(*command: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sorted_run = in_venv("notcat-sort", str(photos), "--copy", "-j", "1", "--report", "-", cwd=elsewhere)
    assert sorted_run.returncode == 0, sorted_run.stderr
    rows = sorted_run.stdout.splitlines()[1:]
    assert len(rows) == 3 and all(",copy," in row and ",done," in row for row in rows)
    assert len([p for label in ("cat", "not-cat") for p in (photos / label).rglob("*.jpg")]) == 3

    where = in_venv(str(venv / "bin" / "python"), "-c",
                    "import notcat_sort.model as m; print(m.__file__); print(m.default_model_path())", cwd=elsewhere)
    module, model = where.stdout.split()
    assert Path(module).is_relative_to(venv) and Path(model).is_relative_to(venv), "not installed from a wheel"
    assert Path(model).with_suffix(".json").is_file()

    torch = in_venv(str(venv / "bin" / "python"), "-c", "import torch", cwd=elsewhere)
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr

    serve_help = in_venv("notcat-sort", "serve", "--help", cwd=elsewhere)  # without the serve extra
    assert serve_help.returncode == 0 and "--report" in serve_help.stdout, serve_help.stderr

    # The training CLI's help from the checkout, without the train extra: it lists its commands.
    training_help = in_venv(str(venv / "bin" / "python"), "-m", "training", "--help", cwd=REPO)
    assert training_help.returncode == 0 and "Traceback" not in training_help.stderr, training_help.stderr
    assert "{fit,attributes,evaluate,identity,thumbnails,uncertain,small-cats}" in training_help.stdout
    fit_help = in_venv(str(venv / "bin" / "python"), "-m", "training", "fit", "--help", cwd=REPO)
    assert fit_help.returncode == 1 and "needs the train extra" in fit_help.stderr and "Traceback" not in fit_help.stderr
