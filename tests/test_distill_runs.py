"""Distillation end to end: a killed run resumed, two processes against one, fine-tuning, a two-stage TinyBERT run
and the shared teacher. (The step timer is in test_step_time.py, the GPU check's two halves in test_gpu_check.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distill import _recipe, assert_same_up_to_rounding

from conftest import (
    REPO,
    TOY_QAS,
    TRAIN,
    edgeqa_command,
    kill_when_written,
    make_tiny_qa_model,
    run_to_end,
    write_squad,
)
from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model
from edgeqa.bench.squad import load_squad
from edgeqa.compress.student import StudentSpec, build_student
from edgeqa.compress.train_config import TrainConfig
from edgeqa.pipeline.run import run_recipe


@pytest.fixture
def toy_train(tmp_path) -> Path:
    """48 answered questions: enough windows for a few batches of a tiny run (as in test_distill.py)."""
    return write_squad(tmp_path / "train.json", TOY_QAS * 16)


# --- the loop ------------------------------------------------------------------------------------------------------


def test_a_killed_distillation_resumes_to_the_same_weights(tmp_path, toy_train, toy_squad):
    """`edgeqa distill` in a process that is SIGKILLed once its first checkpoint exists, started again: it says
    from which step it resumes, runs only the rest, and ends with the weights and log of a run never stopped."""
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=4)
    block = """\
    student: {layers: [0, 2]}
    train: {data: TRAIN, batch_size: 8, precision: fp32, eval_every: 4, eval_limit: 3, checkpoint_every: 3,
            log_every: 1}
    stages:
      - {loss: {hard: 0.5, soft: 0.5, temperature: 2.0}, epochs: 4, lr: 1.0e-3}
    """
    path = _recipe(tmp_path, teacher, toy_train, toy_squad, block)
    whole, killed = tmp_path / "whole" / "d", tmp_path / "killed" / "d"
    run_to_end(edgeqa_command("distill", str(path), "--out", str(whole.parent)), tmp_path / "whole.log", tmp_path)
    checkpoint = killed / "work" / "student" / "checkpoint.pt"
    argv = edgeqa_command("distill", str(path), "--out", str(killed.parent))
    kill_when_written(argv, checkpoint, tmp_path / "first.log", tmp_path)
    assert not (killed / "models" / "student").exists()  # killed before the end
    state = torch.load(checkpoint, weights_only=False)
    at = state["step"]
    assert "dropout" not in state["config"]["train"]  # left at its default, it stays out: older checkpoints resume
    log = run_to_end(argv, tmp_path / "second.log", tmp_path)
    assert f"resuming from {checkpoint}: stage 0, step {at}" in log

    total = json.loads((whole / "models" / "student" / "training.json").read_text())["steps"][0]
    starts = json.loads((killed / "models" / "student" / "training.json").read_text())["starts"]
    assert 0 < at < total
    assert starts == [{"stage": 0, "step": 0, "steps_run": at}, {"stage": 0, "step": at, "steps_run": total - at}]

    def last_and_best(root: Path) -> dict[str, torch.Tensor]:
        last = torch.load(root / "work" / "student" / "checkpoint.pt", weights_only=False)["model"]
        best = load_file(root / "models" / "student" / "model.safetensors")
        return {**{f"last.{k}": v for k, v in last.items()}, **{f"best.{k}": v for k, v in best.items()}}

    a, b = last_and_best(whole), last_and_best(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = (whole / "models" / "student" / "train_log.jsonl").read_text().splitlines()
    log_b = (killed / "models" / "student" / "train_log.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "windows_per_s"} for x in log_a]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "windows_per_s"} for x in log_b]
    # The student loads like any QA model, and the shared cache was filled once.
    load_torch_qa_model(killed / "models" / "student")
    assert len(list((killed.parent / "cache").iterdir())) == 1


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, toy_train, toy_squad):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2, dropout=0.0)
    block = """\
    student: {layers: [0, 1]}
    train: {data: TRAIN, batch_size: 8, precision: fp32, eval_limit: 3, checkpoint_every: 50, log_every: 1,
            record_windows: true}
    stages:
      - {loss: {hard: 0.5, soft: 0.5, temperature: 2.0}, max_steps: 4, lr: 1.0e-3, warmup: 0}
    """
    path = _recipe(tmp_path, teacher, toy_train, toy_squad, block)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cli = ["-m", "edgeqa.cli", "distill", str(path)]
    for procs, out in ((1, "one"), (2, "two")):
        done = subprocess.run(
            [*launch, str(procs), *cli, "--out", str(tmp_path / out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    def windows(out: str, rank: int) -> list[list[int]]:
        lines = (tmp_path / out / "d" / "work" / "student" / f"windows-{rank}.jsonl").read_text().splitlines()
        return [json.loads(line)["windows"] for line in lines]

    # Each step, the two processes train on disjoint halves that together are the one process's batch.
    whole, first, second = windows("one", 0), windows("two", 0), windows("two", 1)
    assert len(whole) == len(first) == len(second) == 4
    for w, a, b in zip(whole, first, second, strict=True):
        assert len(w) == 8 and len(a) == len(b) == 4
        assert not set(a) & set(b) and sorted(a + b) == w
    one = load_file(tmp_path / "one" / "d" / "models" / "student" / "model.safetensors")
    two = load_file(tmp_path / "two" / "d" / "models" / "student" / "model.safetensors")
    start = load_torch_qa_model(teacher).state_dict()
    moved = max(float((one[k] - start[k]).abs().max()) for k in one)
    assert moved > 1e-3  # training changed the weights ...
    assert_same_up_to_rounding(one, two, last_layer=1)  # ... and two processes changed them as one did
    info = json.loads((tmp_path / "two" / "d" / "models" / "student" / "training.json").read_text())
    assert info["processes"] == 2
    assert info["bf16"] is False and info["precision"] == {"asked": "fp32", "chosen": "fp32", "reason": "given: fp32"}


def test_finetuning_a_pretrained_encoder_without_teacher(tmp_path, toy_train, toy_squad):
    encoder = make_tiny_qa_model(tmp_path / "encoder", qa_head=False)
    block = f"""\
    student: {{pretrained: {encoder}}}
    train: {{data: TRAIN, batch_size: 8, precision: fp32, eval_limit: 3, checkpoint_every: 50, log_every: 1,
             dropout: 0.0}}
    stages:
      - {{loss: {{hard: 1.0}}, epochs: 6, lr: 3.0e-3}}
    """
    root = run_recipe(_recipe(tmp_path, encoder, toy_train, toy_squad, block), tmp_path / "r")
    folder = root / "models" / "student"
    saved = load_torch_qa_model(folder)  # the new QA head is trained and saved
    assert saved.config.hidden_dropout_prob == 0.1  # trained without dropout, saved with the model's own rates
    losses = [e["hard"] for e in map(json.loads, (folder / "train_log.jsonl").read_text().splitlines()) if "hard" in e]
    assert losses[-1] < 0.5 * losses[0]
    assert json.loads((folder / "training.json").read_text())["teacher"] is None


def test_tinybert_two_stage_with_projection_and_attention(tmp_path, toy_train, toy_squad):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=4, hidden=32, heads=4)
    block = """\
    student: {num_hidden_layers: 2, hidden_size: 16, num_attention_heads: 4, intermediate_size: 32, init: random}
    train: {data: TRAIN, batch_size: 8, precision: fp32, eval_limit: 3, checkpoint_every: 50, log_every: 1}
    stages:
      - {loss: {hidden: 1.0, attention: 1.0, embedding: 1.0}, epochs: 4, lr: 3.0e-3}
      - {loss: {soft: 1.0}, epochs: 1, lr: 1.0e-3}
    """
    root = run_recipe(_recipe(tmp_path, teacher, toy_train, toy_squad, block), tmp_path / "r")
    entries = [json.loads(x) for x in (root / "models" / "student" / "train_log.jsonl").read_text().splitlines()]
    first = [e for e in entries if e.get("stage") == 0 and "loss" in e]
    assert {"hidden", "attention", "embedding"} <= set(first[0])
    assert first[-1]["loss"] < first[0]["loss"]
    assert any(e.get("stage") == 1 and "soft" in e for e in entries)
    assert load_torch_qa_model(root / "models" / "student").config.hidden_size == 16


# --- on the shared teacher and data --------------------------------------------------------------------------------


def test_distilled_student_of_the_shared_teacher_learns(tmp_path, teacher):
    from conftest import DEV
    from edgeqa.compress.train_eval import score_student

    block = """\
    student: {layers: [0, 2, 4]}
    train: {data: TRAIN, limit: 320, batch_size: 16, eval_limit: 100, checkpoint_every: 50,
            freeze_word_embeddings: true}
    stages:
      - {loss: {hard: 0.5, soft: 0.5, temperature: 2.0}, max_steps: 20, lr: 2.0e-4}
    """
    root = run_recipe(_recipe(tmp_path, teacher, TRAIN, DEV, block), tmp_path / "runs")
    info = json.loads((root / "models" / "student" / "training.json").read_text())
    untrained = build_student(StudentSpec(layers=(0, 2, 4)), load_torch_qa_model(teacher))
    before = score_student(
        untrained,
        load_tokenizer(teacher),
        load_squad(DEV, 100).examples,
        ("input_ids", "attention_mask", "token_type_ids"),
        TrainConfig(data=str(TRAIN)),
    )
    assert info["best"]["f1"] > before["f1"] + 10, (before, info["best"])
    assert info["parameters"] < 0.8 * sum(p.numel() for p in load_torch_qa_model(teacher).parameters())


def test_finetuning_the_packaged_minilm_encoder(tmp_path, teacher):
    from edgeqa.pipeline.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "finetune-minilm-cpu.yaml")
    encoder = recipe.steps[0].config.student.pretrained
    assert Path(encoder, "model.safetensors").exists()
    block = f"""\
    student: {{pretrained: {encoder}}}
    train: {{data: TRAIN, limit: 32, batch_size: 16, eval_limit: 10, checkpoint_every: 50}}
    stages:
      - {{loss: {{hard: 1.0}}, max_steps: 2}}
    """
    from conftest import DEV

    root = run_recipe(_recipe(tmp_path, teacher, TRAIN, DEV, block), tmp_path / "runs")
    student = load_torch_qa_model(root / "models" / "student")  # a QA model now, with its own head
    assert student.config.num_hidden_layers == 6 and (root / "models" / "student" / "tokenizer.json").exists()
