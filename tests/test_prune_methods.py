"""The pruning-method registry (compress/prune_config.py): a method declared once, as one config class, is parsed
from a recipe, checked, applied, recorded and described from its class alone; every method's keys are documented."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from conftest import REPO, write_recipe
from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.prune import PRUNING_METHODS, PruneConfig, prunable_linears, prune_config_from_dict
from edgeqa.compress.prune_config import register_pruning
from edgeqa.pipeline.recipe import load_recipe
from edgeqa.pipeline.run import run_recipe


@dataclass(frozen=True, kw_only=True)
class RowsConfig(PruneConfig):
    """A method that exists only in this test: zeroes the first `share` of every encoder matrix's output rows."""

    method: ClassVar[str] = "rows"
    share: float = 0.5

    def validate(self) -> None:
        if not 0 < self.share < 1:
            raise EdgeQAError(f"share must be in (0, 1), got {self.share}")

    def apply(self, model, trainset=None, gradual: bool = False) -> dict[str, Any]:
        import torch

        layers = prunable_linears(model)
        with torch.no_grad():
            for m in layers.values():
                m.weight[: round(self.share * m.weight.shape[0])] = 0
        return {"matrices": len(layers)}

    def describe(self, record: dict[str, Any]) -> str:
        return f"first {self.share:.0%} of rows"


@pytest.fixture
def rows_method(monkeypatch):
    monkeypatch.setitem(PRUNING_METHODS, "rows", RowsConfig)
    return RowsConfig


def test_a_registered_method_is_parsed_applied_recorded_and_described(rows_method, tiny_qa_model, toy_squad,
                                                                      tmp_path):  # fmt: skip
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_qa_model, toy_squad, "- prune: {name: r, method: rows, share: 0.25}\n"
    )
    root = run_recipe(recipe, tmp_path / "runs")
    record = json.loads((root / "models" / "r" / "prune.json").read_text())
    # Tiny encoder matrices: 32 x 32 (q, k, v, attention out), 128 x 32 and 32 x 128 per layer; a quarter of each
    # matrix's rows is a quarter of its weights, so a quarter of all of them, whatever the shapes.
    assert record["pruned_matrices_sparsity"] == 0.25
    assert (record["method"], record["description"]) == ("rows", "first 25% of rows")
    step = json.loads((root / "models" / "r" / "step.json").read_text())
    assert (step["method"], step["share"]) == ("rows", 0.25)
    with pytest.raises(EdgeQAError, match=r"r.yaml:7: share must be in \(0, 1\), got 1.0"):
        load_recipe(
            write_recipe(
                tmp_path / "r.yaml", tiny_qa_model, toy_squad, "- prune: {name: r, method: rows, share: 1.0}\n"
            )
        )
    with pytest.raises(EdgeQAError, match=r"prune method rows takes no sparsity \(settings of magnitude or pattern\)"):
        prune_config_from_dict({"method": "rows", "sparsity": 0.5})
    with pytest.raises(ValueError, match="registered twice"):
        register_pruning(RowsConfig)


def test_an_unregistered_method_is_refused_naming_the_registered_ones():
    with pytest.raises(EdgeQAError, match="prune method must be one of magnitude, pattern, structured, got 'rows'"):
        prune_config_from_dict({"method": "rows", "share": 0.5})


def test_version_2_spelling_of_pattern_pruning_reads_as_the_pattern_method():
    cfg = prune_config_from_dict({"method": "magnitude", "backend": "neural-compressor", "pattern": "2:4"})
    assert (cfg.method, cfg.pattern, cfg.needs_training) == ("pattern", "2:4", True)
    assert (cfg.to_dict()["method"], cfg.to_dict()["backend"]) == ("magnitude", "neural-compressor")
    with pytest.raises(EdgeQAError, match="backend must be 'torch' or 'neural-compressor'"):
        prune_config_from_dict({"method": "structured", "backend": "neural-compressor", "ffn": 0.5})


def test_every_methods_settings_are_documented():
    doc = (REPO / "docs" / "results" / "pruning.md").read_text()
    for name, cls in PRUNING_METHODS.items():
        assert name in doc
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in doc]
        assert not missing, (name, missing)
