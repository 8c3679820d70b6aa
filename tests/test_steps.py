"""The step-kind registry (pipeline/step.py): a kind declared once is parsed, checked, run and made once from its
class alone, and every kind's recipe keys are documented."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from conftest import REPO, write_recipe
from edgeqa.bench.files import EdgeQAError
from edgeqa.pipeline.recipe import load_recipe
from edgeqa.pipeline.run import run_recipe
from edgeqa.pipeline.step import STEP_KINDS, MadeStep, register_step


@dataclass(frozen=True, kw_only=True)
class NoteStep(MadeStep):
    """A step kind that exists only in this test: copies its source's config.json and writes its note beside it."""

    kind: ClassVar[str] = "note"
    text: str = "hello"
    made: ClassVar[list[str]] = []
    mood: ClassVar[str] = "calm"

    def check(self, run) -> None:
        if not self.text:
            raise EdgeQAError(f"{run.recipe.path}:{self.line}: a note needs text")

    def identity(self, run) -> dict:
        return {**super().identity(run), "text": self.text}

    def describe(self, run) -> str:
        return f"a note saying {self.text}, {NoteStep.mood}"

    def make(self, run, out: Path) -> None:
        NoteStep.made.append(self.name)
        (out / "config.json").write_bytes((run.source(self.source).path / "config.json").read_bytes())
        (out / "note.txt").write_text(self.text)


@pytest.fixture
def note_kind(monkeypatch):
    monkeypatch.setitem(STEP_KINDS, "note", NoteStep)
    monkeypatch.setattr(NoteStep, "mood", "calm")
    NoteStep.made.clear()
    return NoteStep


def test_a_registered_kind_is_parsed_checked_and_made_once_from_its_class_alone(note_kind, tiny_qa_model, toy_squad,
                                                                                  tmp_path):  # fmt: skip
    steps = "- note: {name: a, text: hi}\n- note: {name: b, from: a}\n"
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_qa_model, toy_squad, steps))
    assert [(s.kind, s.name, s.source, s.text, s.line) for s in recipe.steps] == [
        ("note", "a", "pytorch-fp32", "hi", 7), ("note", "b", "a", "hello", 8)]  # fmt: skip
    root = run_recipe(recipe.path, tmp_path / "runs")
    assert (root / "models" / "a" / "note.txt").read_text() == "hi"
    record = json.loads((root / "models" / "b" / "step.json").read_text())
    assert (record["step"], record["text"], record["from"]) == ("note", "hello", str(root / "models" / "a"))
    assert record["description"] == "a note saying hello, calm"  # the kind's own words, in its record
    note_kind.mood = "cheerful"  # words are not settings: another description is no reason to make it again
    run_recipe(recipe.path, tmp_path / "runs")
    assert note_kind.made == ["a", "b"]  # the second run made nothing
    assert json.loads((root / "models" / "b" / "step.json").read_text())["description"] == "a note saying hello, calm"


def test_a_kinds_keys_references_and_check_come_from_its_class(note_kind, tiny_qa_model, toy_squad, tmp_path):
    def recipe(steps: str) -> Path:
        return write_recipe(tmp_path / "r.yaml", tiny_qa_model, toy_squad, steps)

    with pytest.raises(EdgeQAError, match=r"r.yaml:7.*colour.*(from, name, text|text)"):
        load_recipe(recipe("- note: {name: a, colour: red}\n"))
    with pytest.raises(EdgeQAError, match=r"r.yaml:7: step 'note' takes from 'z', which no earlier step makes"):
        load_recipe(recipe("- note: {name: a, from: z}\n"))
    with pytest.raises(EdgeQAError, match=r"r.yaml:7: step 'note' needs a name"):
        load_recipe(recipe("- note: {text: hi}\n"))
    with pytest.raises(EdgeQAError, match=r"r.yaml:7: a note needs text"):
        run_recipe(recipe("- note: {name: a, text: ''}\n"), tmp_path / "runs")
    assert not (tmp_path / "runs" / "t" / "models").exists()  # checked before any work
    with pytest.raises(ValueError, match="registered twice"):
        register_step(NoteStep)


def test_the_nine_kinds_are_registered_and_their_keys_documented():
    assert {"bench", "distill", "export", "fuse", "mobile", "prune", "quantize", "report", "torch_int8"} <= set(
        STEP_KINDS
    )
    reference = (REPO / "docs" / "recipes.md").read_text()
    for kind, cls in STEP_KINDS.items():
        assert f"`{kind}`" in reference, kind
        if kind not in ("distill", "prune"):  # their keys: docs/results/distillation.md and pruning.md
            undocumented = {k for k in cls.keys() - {"name", "from"} if f"`{k}`" not in reference}
            assert not undocumented, (kind, undocumented)


def test_each_made_kind_describes_what_it_made_in_one_line(tiny_qa_model, toy_squad, tmp_path, monkeypatch):
    from edgeqa.bench.cpu import this_cpu

    monkeypatch.setenv("EDGEQA_CPU_FLAGS", "avx2")
    this_cpu.cache_clear()
    steps = """
      - export: {name: onnx}
      - fuse: {name: fused, from: onnx, fusions: [attention]}
      - quantize: {name: int8, from: fused, mode: dynamic}
      - quantize: {name: int8-arm, from: fused, preset: arm64}
      - mobile: {name: ort, from: int8}
      - distill: {name: s, student: {layers: [0]}, train: {data: DATA}, stages: [{loss: {hard: 0.5, soft: 0.5}}]}
      - distill: {name: narrow, student: {hidden_size: 16}, train: {data: DATA}, stages: [{loss: {hard: 1.0}}]}
      - distill: {name: two, student: {num_hidden_layers: 2}, train: {data: DATA}, stages: [{loss: {soft: 1.0}}]}
      - prune: {name: p, from: s, method: structured, heads: 0.5, train: {data: DATA}, stages: [{loss: {soft: 1.0}}]}
      - prune: {name: m, sparsity: 0.5}
    """.replace("DATA", str(toy_squad))
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_qa_model, toy_squad, steps))
    said = {s.name: s.describe(None) for s in recipe.steps}
    this_cpu.cache_clear()
    assert said == {
        "onnx": "ONNX export of pytorch-fp32 at opset 17, checked against PyTorch",
        "fused": "ONNX Runtime's attention fusions of onnx",
        "int8": "dynamic int8 of fused (7-bit weights, preset avx2 (chosen for a CPU of class avx2))",
        "int8-arm": "dynamic int8 of fused (8-bit weights, preset arm64 (named, made on a CPU of class avx2, "
        "does not fit it))",
        "ort": "ONNX Runtime's mobile format (.ort) of int8",
        "s": "student of teacher layers [0], distilled from pytorch-fp32 (hard+soft)",
        "narrow": "student of the teacher's number of layers, distilled from pytorch-fp32 (hard)",
        "two": "student of 2 layers, distilled from pytorch-fp32 (soft)",
        "p": "structured (magnitude): heads 0.5, FFN 0.0 of s, recovered by distillation from pytorch-fp32",
        "m": "magnitude 50% (global, oneshot) of pytorch-fp32",
    }
