"""Pruning through recipes: prune, recover (resuming after a kill), export and report, and the refusals that come
before any work. Each runs a tiny model end to end."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForQuestionAnswering

from conftest import (
    TOY_QAS,
    edgeqa_command,
    kill_when_written,
    make_tiny_qa_model,
    run_to_end,
    write_recipe,
    write_squad,
)
from edgeqa.bench.engines import load_torch_qa_model
from edgeqa.compress.prune_magnitude import REFIT_MIN_RISE, cubic_sparsity, sparsity_report
from edgeqa.pipeline.records import making_times
from edgeqa.pipeline.run import run_recipe


def _prune_recipe(tmp_path, model, data, steps: str) -> Path:
    return write_recipe(tmp_path / "prune.yaml", model, data, textwrap.dedent(steps).replace("DATA", str(data)), "p")


def sparse_step(train: Path, eval_every: int, max_steps: int) -> str:
    """A 70% magnitude pruning step with recovery, its mask raised on a cubic schedule over the first half."""
    return textwrap.dedent(f"""\
        - prune:
            name: sparse
            sparsity: 0.7
            schedule: cubic
            update_every: 2
            ramp: 0.5
            train: {{data: {train}, batch_size: 8, precision: fp32, checkpoint_every: 4, eval_every: {eval_every},
                     eval_limit: 3}}
            stages:
              - {{loss: {{hard: 0.5, soft: 0.5}}, max_steps: {max_steps}, lr: 1.0e-3}}
        """)


def test_a_killed_pruning_recovery_resumes_with_its_masks(tmp_path, toy_squad):
    """`edgeqa prune` SIGKILLed after its first checkpoint, while the cubic schedule is still raising the masks,
    then started again: it resumes from that step and ends with the weights and masks of a run never stopped."""
    teacher = make_tiny_qa_model(tmp_path / "t", layers=2, hidden=32, heads=4)
    train = write_squad(tmp_path / "train.json", TOY_QAS * 16)
    steps = sparse_step(train, eval_every=4, max_steps=24)
    path = _prune_recipe(tmp_path, teacher, toy_squad, steps)
    whole, killed = tmp_path / "whole" / "p", tmp_path / "killed" / "p"
    run_to_end(edgeqa_command("prune", str(path), "--out", str(whole.parent)), tmp_path / "whole.log", tmp_path)
    checkpoint = killed / "work" / "sparse" / "checkpoint.pt"
    argv = edgeqa_command("prune", str(path), "--out", str(killed.parent))
    kill_when_written(argv, checkpoint, tmp_path / "first.log", tmp_path)
    assert not (killed / "models" / "sparse").exists()
    at = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < at < 12  # the masks were still growing (ramp: half of 24 steps)
    log = run_to_end(argv, tmp_path / "second.log", tmp_path)
    assert f"resuming from {checkpoint}: stage 0, step {at}" in log
    starts = json.loads((killed / "models" / "sparse" / "training.json").read_text())["starts"]
    assert starts == [{"stage": 0, "step": 0, "steps_run": at}, {"stage": 0, "step": at, "steps_run": 24 - at}]
    # The model's making time counts both starts, as its training record does, not the last start alone (which of
    # the two is larger depends on the machine's speed; test_report.py pins the rule with known seconds).
    trained = json.loads((killed / "models" / "sparse" / "training.json").read_text())["train_seconds"]
    last_start = json.loads((killed / "models" / "sparse" / "step.json").read_text())["seconds"]
    assert making_times(killed / "models" / "sparse")[-1]["seconds"] == max(trained, last_start)

    last = [torch.load(r / "work" / "sparse" / "checkpoint.pt", weights_only=False)["model"] for r in (whole, killed)]
    masks = [k for k in last[0] if k.endswith("weight_mask")]
    assert masks and last[0].keys() == last[1].keys()
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])  # weights and masks, bit for bit
    best = [load_file(r / "models" / "sparse" / "model.safetensors") for r in (whole, killed)]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])


def test_magnitude_pruning_with_recovery_saves_plain_sparse_weights(tmp_path, toy_squad):
    teacher = make_tiny_qa_model(tmp_path / "t", layers=2, hidden=32, heads=4)
    train = write_squad(tmp_path / "train.json", TOY_QAS * 16)
    steps = sparse_step(train, eval_every=1, max_steps=10)
    steps += "- export: {name: sparse-onnx, from: sparse}\n- bench: {}\n- report: {}\n"
    root = run_recipe(_prune_recipe(tmp_path, teacher, toy_squad, steps), tmp_path / "runs")
    folder = root / "models" / "sparse"
    weights = load_file(folder / "model.safetensors")
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in weights)
    record = json.loads((folder / "prune.json").read_text())
    assert abs(record["pruned_matrices_sparsity"] - 0.7) < 0.01
    # Evaluated every step, but the result is chosen only once the masks reach 70% (step 6: ramp end 5, updates
    # every 2 steps): an earlier, less sparse model may score better and is still not the pruned model.
    best = json.loads((folder / "training.json").read_text())["best"]
    assert best["step"] >= 6
    assert all(s >= 0.3 for s in record["per_layer"].values())  # global threshold, every matrix pruned
    assert float((weights["qa_outputs.weight"] == 0).float().mean()) == 0.0  # the QA head stays dense
    report = json.loads((root / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    # Measured on the ONNX file: the encoder's matrices are 70% zeros; with the dense embeddings, less overall.
    onnx_sparsity = rows["sparse-onnx"]["extra"]["weights"]["matrix_sparsity"]
    assert 0.2 < onnx_sparsity < 0.7
    assert (
        rows["sparse-onnx"]["extra"]["weights"]["gzip_bytes"] < rows["pytorch-fp32"]["extra"]["weights"]["gzip_bytes"]
    )
    # The exported row carries the pruning it came from, its parameter count and its zeros layer by layer.
    onnx_row = rows["sparse-onnx"]["extra"]
    assert onnx_row["pruning"]["method"] == "magnitude"
    assert onnx_row["pruning"]["description"] == record["description"] == "magnitude 70% (global, cubic)"
    dense_params = rows["pytorch-fp32"]["extra"]["weights"]["parameters"]
    assert abs(onnx_row["weights"]["parameters"] - dense_params) < 0.01 * dense_params
    per_layer = onnx_row["weights"]["per_layer_sparsity"]
    assert set(per_layer) == {"0", "1"} and all(v > 0.3 for v in per_layer.values())
    assert abs(onnx_row["weights"]["encoder_sparsity"] - 0.7) < 0.01  # exactly what the pruner targeted
    assert rows["pytorch-fp32"]["extra"]["weights"]["encoder_sparsity"] == 0.0
    assert (root / "sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (root / "report.md").read_text()
    assert "zeros in weight matrices" in markdown and "Zeros in each encoder layer" in markdown
    assert "magnitude 70% (global, cubic)" in markdown


def test_refit_after_one_shot_and_whenever_the_cubic_masks_grow(tmp_path, toy_squad, monkeypatch):
    import edgeqa.compress.prune_magnitude as prune_mod

    calls = []
    real = prune_mod.refit_kept_weights

    def counted(model, layers, batches, target, choose=False):
        calls.append((round(sparsity_report(model)["pruned_matrices_sparsity"], 2), target, choose))
        return real(model, layers, batches, target, choose)

    monkeypatch.setattr(prune_mod, "refit_kept_weights", counted)
    teacher = make_tiny_qa_model(tmp_path / "t", layers=2, hidden=32, heads=4)
    train = write_squad(tmp_path / "train.json", TOY_QAS * 16)
    steps = """\
    - prune:
        name: gradual
        sparsity: 0.6
        schedule: cubic
        initial: 0.3
        ramp: 1.0
        update_every: 1
        refit: true
        refit_batches: 2
        select: input
        train: {data: TRAIN, batch_size: 8, precision: fp32, checkpoint_every: 50, eval_limit: 3}
        stages:
          - {loss: {hard: 0.5, soft: 0.5}, max_steps: 6, lr: 1.0e-3}
    - prune: {name: once, sparsity: 0.5, refit: true, refit_to: matrix, refit_batches: 2, train: {data: TRAIN}}
    - prune: {name: chosen, sparsity: 0.5, select: input, refit_batches: 2, train: {data: TRAIN}}
    - prune: {name: obs, sparsity: 0.5, refit: true, select: obs, refit_batches: 2, train: {data: TRAIN}}
    """.replace("TRAIN", str(train))
    path = _prune_recipe(tmp_path, teacher, toy_squad, steps)
    root = run_recipe(path, tmp_path / "runs")
    assert json.loads((root / "recipe.json").read_text()) == {"path": str(path), "text": path.read_text()}
    made = json.loads((root / "models" / "once" / "step.json").read_text())  # a one-shot prune's identity
    assert (made["from"], made["data"], made["sparsity"]) == (str(teacher), str(train), 0.5)
    # Refits at 30% before training, then after each step whose mask update adds zeros, except the last: from
    # 59.86% to 60% is too small a rise (< REFIT_MIN_RISE) to be worth one.
    gradual_sparsities = [round(cubic_sparsity(step, 6, 0.6, 1.0, 0.3), 2) for step in range(6)]
    assert cubic_sparsity(6, 6, 0.6, 1.0, 0.3) - cubic_sparsity(5, 6, 0.6, 1.0, 0.3) < REFIT_MIN_RISE
    assert calls == [(s, "model", False) for s in gradual_sparsities] + [(0.5, "matrix", False), (0.5, "model", True)]
    gradual = json.loads((root / "models" / "gradual" / "prune.json").read_text())
    assert abs(gradual["pruned_matrices_sparsity"] - 0.6) < 0.01  # what was pruned before a refit stays zero
    once = json.loads((root / "models" / "once" / "prune.json").read_text())
    refit = once["removed"]["refit"]
    assert refit["matrices"] == 12 and refit["output_error_after"] < refit["output_error_before"]
    assert abs(once["pruned_matrices_sparsity"] - 0.5) < 0.01 and once["recovery"] is None
    chosen = json.loads((root / "models" / "chosen" / "prune.json").read_text())  # measured inputs, no refit
    assert chosen["per_layer"] == once["per_layer"]  # magnitude's share of zeros in each matrix
    assert "refit" not in chosen["removed"] and chosen["settings"]["select"] == "input"
    obs = json.loads((root / "models" / "obs" / "prune.json").read_text())  # chosen inside the refit
    assert obs["per_layer"] == once["per_layer"] and obs["settings"]["select"] == "obs"


def test_structured_pruning_with_recovery_exports_smaller_onnx(tmp_path, toy_squad):
    teacher = make_tiny_qa_model(tmp_path / "t", layers=2, hidden=32, heads=4)
    train = write_squad(tmp_path / "train.json", TOY_QAS * 16)
    steps = """\
    - prune:
        name: slim
        method: structured
        heads: 0.25
        ffn: 0.5
        importance: gradient
        train: {data: TRAIN, batch_size: 8, precision: fp32, checkpoint_every: 4, eval_limit: 3}
        stages:
          - {loss: {soft: 1.0, hidden: 1.0}, max_steps: 4, lr: 1.0e-3}
    - export: {name: slim-onnx, from: slim}
    - export: {name: dense-onnx}
    - prune: {name: slim-now, method: structured, heads: 0.25, importance: gradient, train: {data: TRAIN}}
    """.replace("TRAIN", str(train))
    root = run_recipe(_prune_recipe(tmp_path, teacher, toy_squad, steps), tmp_path / "runs")
    config = json.loads((root / "models" / "slim" / "config.json").read_text())
    assert config["intermediate_size"] == 64 and sum(len(h) for h in config["pruned_heads"].values()) == 2
    record = json.loads((root / "models" / "slim" / "prune.json").read_text())
    assert sum(record["heads_per_layer"]) == 6 and record["intermediate_size"] == 64
    model = load_torch_qa_model(root / "models" / "slim")
    assert model.bert.encoder.layer[0].intermediate.dense.weight.shape == (64, 32)
    dense = sum(p.numel() for p in load_torch_qa_model(teacher).parameters())
    slim = sum(p.numel() for p in model.parameters())
    # Removed: half of each FFN (2 x 2 x 32 x 64 weights + 64 biases) and 2 heads (2 x 4 x 32 x 8 weights + biases).
    assert dense - slim == 2 * (2 * 32 * 64 + 64) + 2 * (4 * 32 * 8 + 3 * 8)
    onnx = {n: (root / "models" / n / "model.onnx").stat().st_size for n in ("slim-onnx", "dense-onnx")}
    assert onnx["dense-onnx"] - onnx["slim-onnx"] > 4 * (dense - slim) * 0.9
    # Without stages there is no recovery; `train: {data}` only feeds the gradient importance.
    once = json.loads((root / "models" / "slim-now" / "prune.json").read_text())
    assert sum(once["heads_per_layer"]) == 6 and once["recovery"] is None


@pytest.mark.parametrize(
    "family, settings, message",
    [
        ("distilbert", "method: structured, heads: 0.25", "structured pruning knows bert models"),
        ("bert", "method: structured, heads: 0.99", "removes every head"),
        ("bert", "sparsity: 1.5", r"sparsity must be in \[0, 1\)"),
        ("bert", "method: structured, heads: 0.25, importance: gradient", "gradient importance measures the loss"),
        ("bert", "sparsity: 0.5, refit: true", "refit fits the kept weights on training data"),
        (
            "bert",
            "sparsity: 0.5, refit: true, include: [qa_outputs], train: {data: DATA}",
            "qa_outputs is not inside a numbered block",
        ),
        ("bert", "train: {data: DATA, batch_size: 8}", "recovery training needs stages"),
        (
            "bert",
            "sparsity: 0.5, train: {data: DATA, dropout: 1.0}, stages: [{loss: {hard: 1.0}}]",
            r"train.dropout must be in \[0, 1\), got 1.0",
        ),
        (
            "bert",
            "method: structured, heads: 0.25, train: {data: DATA}, stages: [{loss: {attention: 1.0}}]",
            "attention transfer",
        ),
    ],
)
def test_bad_pruning_fails_with_file_and_line_before_work(tmp_path, toy_squad, capsys, family, settings, message):
    from edgeqa.cli import main

    model = make_tiny_qa_model(tmp_path / "m", family=family, layers=2)
    path = _prune_recipe(tmp_path, model, toy_squad, f"- prune: {{name: p1, {settings}}}\n- bench: {{}}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and f"{path}:7" in err
    assert not (tmp_path / "runs" / "p" / "models").exists()


def test_pruning_heads_twice_is_refused_before_work(tmp_path, toy_squad, capsys):
    from edgeqa.cli import main

    model = make_tiny_qa_model(tmp_path / "m", layers=2)
    pruned = AutoModelForQuestionAnswering.from_pretrained(model)
    pruned.prune_heads({0: [1]})
    pruned.save_pretrained(model)
    path = _prune_recipe(tmp_path, model, toy_squad, "- prune: {name: p1, method: structured, heads: 0.25}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "already lost heads" in err and f"{path}:7" in err
    assert not (tmp_path / "runs" / "p" / "models").exists()


@pytest.mark.parametrize("pattern", ["4x1", "2:4"])
def test_neural_compressor_patterns_during_recovery(tmp_path, toy_squad, pattern):
    teacher = make_tiny_qa_model(tmp_path / "t", layers=2, hidden=32, heads=4)
    train = write_squad(tmp_path / "train.json", TOY_QAS * 16)
    steps = f"""\
    - prune:
        name: patterned
        backend: neural-compressor
        pattern: "{pattern}"
        sparsity: 0.5
        train: {{data: TRAIN, batch_size: 8, precision: fp32, checkpoint_every: 50, eval_limit: 3}}
        stages:
          - {{loss: {{hard: 0.5, soft: 0.5}}, max_steps: 3, lr: 1.0e-3}}
    """.replace("TRAIN", str(train))
    root = run_recipe(_prune_recipe(tmp_path, teacher, toy_squad, steps), tmp_path / "runs")
    weights = load_file(root / "models" / "patterned" / "model.safetensors")
    record = json.loads((root / "models" / "patterned" / "prune.json").read_text())
    assert 0.45 < record["pruned_matrices_sparsity"] < 0.55 and record["source"] == str(teacher)
    step = json.loads((root / "models" / "patterned" / "step.json").read_text())
    assert step["from"] == str(teacher) and step["teacher"] == str(teacher)  # its identity names what it pruned
    w = weights["bert.encoder.layer.0.intermediate.dense.weight"]  # (128 out, 32 in)
    if pattern == "4x1":  # whole blocks of 4 output rows in one input column are zero together
        blocks = (w.view(32, 4, 32) == 0).sum(1)
        assert set(blocks.unique().tolist()) <= {0, 4}
    else:  # at least 2 zeros in every 4 consecutive inputs
        assert ((w.view(128, 8, 4) == 0).sum(-1) >= 2).all()
    assert not (root / "nc_workspace").exists() and not Path("nc_workspace").exists()


def test_pattern_that_does_not_tile_the_weights_is_refused(tmp_path, toy_squad, capsys):
    from edgeqa.cli import main

    model = make_tiny_qa_model(tmp_path / "m", layers=2, hidden=32, heads=4)
    settings = (
        'backend: neural-compressor, pattern: "3x1", train: {data: DATA}, stages: [{loss: {soft: 1.0}, max_steps: 2}]'
    )
    path = _prune_recipe(tmp_path, model, toy_squad, f"- prune: {{name: p1, {settings}}}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 2
    assert "pattern 3x1 does not divide" in capsys.readouterr().err
