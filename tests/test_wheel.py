"""The wheel: one top-level name, and a base install (no torch, no transformers) that answers and scores ONNX models.

The clean venv gets the wheel's base dependencies without a network: the distributions this environment already has
are linked in, found through the wheel's own Requires-Dist, so the test checks what pyproject.toml declares.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import Distribution, distribution
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from conftest import REPO, TOY_QAS, write_squad
from edgeqa.bench.engines import load_qa_model, predict
from edgeqa.bench.squad import load_squad


def _source_copy(dst: Path) -> Path:
    """What setuptools packs, copied out of the checkout, so no build/ folder is left in it (nor stale files in it
    slip into the wheel)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = {"edgeqa", *pyproject["tool"]["setuptools"].get("package-dir", {}).values()}
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in folders:  # a subpackage's folder is copied with its parent's
        shutil.copytree(REPO / name, dst / name, ignore=ignore, dirs_exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dst / name)
    return dst


def _build_wheel(tmp: Path) -> Path:
    src = _source_copy(tmp / "src")
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", out]
    subprocess.run([*map(str, cmd), str(src)], check=True, capture_output=True, timeout=120)
    (wheel,) = out.glob("edgeqa-*.whl")
    return wheel


def _base_closure(wheel: Path) -> list[Distribution]:
    """The installed distributions the wheel's base requirements (no extras) pull in, transitively."""
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(meta).decode()
    todo = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    seen: dict[str, Distribution] = {}
    while todo:
        req = Requirement(todo.pop())
        if (req.marker and not req.marker.evaluate({"extra": ""})) or req.name.lower() in seen:
            continue
        dist = distribution(req.name)
        seen[req.name.lower()] = dist
        todo += dist.requires or []
    return list(seen.values())


def _link_distributions(dists: list[Distribution], site: Path) -> None:
    """Symlink each distribution's top-level files and folders (from its RECORD) into `site`."""
    for dist in dists:
        root = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            if not (site / top).exists():
                (site / top).symlink_to(root / top)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def base_venv(wheel, tmp_path_factory) -> Path:
    """A venv outside the checkout with the wheel and its base dependencies only."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
    install = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q"]
    subprocess.run([*map(str, install), "--no-deps", "--no-index", str(wheel)], check=True, timeout=120)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    _link_distributions(_base_closure(wheel), site)
    return venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_wheel_has_one_top_level_name_and_the_mapped_packages(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"edgeqa", "edgeqa-0.1.0.dist-info"}
    modules = [p.relative_to(REPO).as_posix() for folder in ("bench", "export", "compress", "pipeline")
               for p in (REPO / folder).rglob("*.py")]  # fmt: skip
    assert "pipeline/steps/export_step.py" in modules  # subpackages included
    missing = [m for m in ["cli.py", *modules] if f"edgeqa/{m}" not in names]
    assert not missing, f"not in the wheel: {missing}"


def test_base_install_runs_onnx_models_without_torch(base_venv, tiny_onnx_model, tmp_path):
    """In the clean venv, with cwd outside the checkout: the CLI and edgeqa.bench import, the bare folder names,
    torch and transformers do not, and answer/eval on an ONNX model give the PyTorch environment's answers."""
    assert not str(tmp_path).startswith(str(REPO))
    py = str(base_venv / "bin" / "python")
    run = _run(base_venv, "edgeqa", "--help", cwd=tmp_path)
    assert run.returncode == 0 and "answer" in run.stdout, run.stderr
    run = _run(base_venv, py, "-c", "import edgeqa.bench, edgeqa.bench.engines as e; print(e.__file__)", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(str(base_venv)), run.stdout
    for name in ("bench", "torch", "transformers"):
        run = _run(base_venv, py, "-c", f"import {name}", cwd=tmp_path)
        assert run.returncode == 1 and f"No module named '{name}'" in run.stderr, name

    torch_dir, onnx_dir = tiny_onnx_model
    data = write_squad(tmp_path / "toy.json", TOY_QAS)
    examples = load_squad(data).examples
    torch_model = load_qa_model(torch_dir, 1)
    assert torch_model.engine.backend == "torch"
    expected = predict(torch_model, examples, progress=False)

    ex = examples[0]
    run = _run(base_venv, "edgeqa", "answer", "--model", str(onnx_dir), "--question", ex.question,
               "--context", ex.context, "--json", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["answer"] == expected[ex.id]
    run = _run(base_venv, "edgeqa", "eval", "--model", str(onnx_dir), "--data", str(data), "--out", "ev", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "ev" / "predictions.json").read_text()) == expected
    assert os.path.exists(tmp_path / "ev" / "metrics.json")
