"""The recipe's `qa:` section is the one QA window: training, calibration, parity and scoring all use it."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from edgeqa.bench.files import EdgeQAError
from edgeqa.pipeline.recipe import load_recipe
from edgeqa.pipeline.run import run_recipe

STEPS = """\
steps:
  - distill:
      name: student
      student: {layers: [0]}
      train: {data: DATA, batch_size: 2, eval_limit: 2, precision: fp32}
      stages: [{loss: {hard: 0.5, soft: 0.5}, max_steps: 2}]
  - export: {name: onnx, from: student}
  - quantize: {name: int8, from: onnx, mode: static, calibration_samples: 4}
  - bench: {variants: [student, int8]}
"""


def _recipe(tmp_path, model, data, qa: str, steps: str = STEPS):
    text = textwrap.dedent(f"""\
        name: window
        model: {model}
        qa: {qa}
        eval: {{data: {data}, batch_size: 4}}
        calibration: {{data: {data}}}
        parity: {{limit: 2, min_same_answer_share: 0.0, tolerance: 1.0}}
        bench: {{threads: 1, batch_sizes: [1], seq_lens: [32], warmup: 1, repeats: 2}}
        """) + steps.replace("DATA", str(data))
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_a_recipe_window_of_48_tokens_trains_calibrates_and_scores_at_48(tmp_path, tiny_qa_model, toy_squad,
                                                                          monkeypatch):  # fmt: skip
    import edgeqa.export.quantize as quantize_module

    calibrated = []
    real_tokenize = quantize_module.tokenize

    def spy(tokenizer, questions, contexts, cfg):
        calibrated.append(cfg.max_length)
        return real_tokenize(tokenizer, questions, contexts, cfg)

    monkeypatch.setattr(quantize_module, "tokenize", spy)
    root = run_recipe(_recipe(tmp_path, tiny_qa_model, toy_squad, "{max_length: 48, doc_stride: 16}"), tmp_path / "r")

    # Training: the teacher's cached logits are one row per training window of 48 positions.
    logits = [np.load(p, mmap_mode="r") for p in (tmp_path / "r" / "cache").rglob("logits.npy")]
    assert logits and all(a.shape[-1] == 48 for a in logits)
    assert json.loads((root / "models" / "student" / "step.json").read_text())["train"]["max_length"] == 48
    # Calibration: every calibration window was cut at 48 tokens.
    assert calibrated and set(calibrated) == {48}
    # Scoring: both the student and its int8 export were scored with the 48-token window.
    for name in ("student", "int8"):
        settings = json.loads((root / "eval" / name / "metrics.json").read_text())["settings"]
        assert (settings["max_length"], settings["doc_stride"]) == (48, 16)


def test_a_step_window_that_contradicts_the_recipe_window_is_refused(tmp_path, tiny_qa_model, toy_squad):
    steps = STEPS.replace("precision: fp32}", "precision: fp32, max_length: 64}")
    path = _recipe(tmp_path, tiny_qa_model, toy_squad, "{max_length: 48, doc_stride: 16}", steps)
    with pytest.raises(
        EdgeQAError, match=r"recipe.yaml:9: train.max_length is 64 but the recipe's qa.max_length is 48"
    ):
        load_recipe(path)
    # The section itself is checked like any other.
    with pytest.raises(EdgeQAError, match="unknown key 'stride' in qa"):
        load_recipe(_recipe(tmp_path, tiny_qa_model, toy_squad, "{stride: 16}"))
    with pytest.raises(EdgeQAError, match="doc_stride must be in"):
        load_recipe(_recipe(tmp_path, tiny_qa_model, toy_squad, "{max_length: 48, doc_stride: 30}"))
