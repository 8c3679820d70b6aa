"""Distillation before training: students built from the teacher, dropout and precision settings, and the specs
refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_distill import _recipe

from conftest import FAMILIES, TOY_QAS, make_tiny_qa_model, write_squad
from edgeqa.bench.engines import load_torch_qa_model
from edgeqa.bench.files import EdgeQAError
from edgeqa.cli import main
from edgeqa.compress.devices import choose_precision
from edgeqa.compress.forward import set_dropout
from edgeqa.compress.student import StudentSpec, build_student, default_layer_map, student_config, teacher_layers
from edgeqa.pipeline.run import run_recipe


@pytest.fixture
def toy_train(tmp_path) -> Path:
    """48 answered questions: enough windows for a few batches of a tiny run (as in test_distill.py)."""
    return write_squad(tmp_path / "train.json", TOY_QAS * 16)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_zero_makes_a_training_forward_what_inference_computes(family, tmp_path):
    model = load_torch_qa_model(make_tiny_qa_model(tmp_path / family, family=family, layers=1))
    inputs = {"input_ids": torch.randint(5, 30, (4, 24)), "attention_mask": torch.ones(4, 24, dtype=torch.long)}
    inputs["attention_mask"][:2, 18:] = 0  # padded rows take the masked attention path
    reference = model.eval()(**inputs).start_logits
    model.train()
    set_dropout(model, 0.3)  # some families (ALBERT) train without dropout by default
    assert not torch.allclose(model(**inputs).start_logits, reference)
    set_dropout(model, 0.0)
    torch.testing.assert_close(model(**inputs).start_logits, reference)
    assert model.config.to_dict() == load_torch_qa_model(tmp_path / family).config.to_dict()


AVX2 = frozenset({"avx2"})
AVX512 = frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"})  # bf16 through fp32 emulation only
AVX512_BF16 = AVX512 | {"avx512_bf16"}
AMX = AVX512_BF16 | {"amx_bf16", "amx_int8"}


@pytest.mark.parametrize(
    "asked, device, arch, flags, cuda_bf16, bf16, reason",
    [
        ("auto", "cpu", "x86_64", AVX2, False, False, "auto: no native bf16 on this CPU (isa avx2)"),
        ("auto", "cpu", "x86_64", AVX512, False, False, "auto: no native bf16 on this CPU (isa avx512_vnni)"),
        ("auto", "cpu", "x86_64", AVX512_BF16, False, True, "auto: CPU has avx512_bf16"),
        ("auto", "cpu", "x86_64", AMX, False, True, "auto: CPU has amx_bf16"),
        ("auto", "cpu", "aarch64", frozenset({"asimd", "asimddp", "i8mm", "bf16"}), False, True, "auto: CPU has bf16"),
        (
            "auto",
            "cpu",
            "aarch64",
            frozenset({"asimd", "asimddp"}),
            False,
            False,
            "auto: no native bf16 on this CPU (isa arm64_dotprod)",
        ),
        ("auto", "cuda:0", "x86_64", AVX2, True, True, "auto: CUDA bf16"),
        ("auto", "cuda:1", "x86_64", AMX, False, False, "auto: no bf16 on this GPU"),
        ("fp32", "cpu", "x86_64", AMX, False, False, "given: fp32"),
        ("bf16", "cpu", "x86_64", AVX2, False, True, "given: bf16"),
        ("fp32", "cuda:0", "x86_64", AVX2, True, False, "given: fp32"),
    ],
)
def test_precision_auto_is_bf16_only_where_the_hardware_has_it(asked, device, arch, flags, cuda_bf16, bf16, reason):
    from edgeqa.bench.cpu import CPU

    chosen = choose_precision(asked, device, CPU("some cpu", arch, flags), cuda_bf16)
    assert (chosen.bf16, chosen.reason) == (bf16, reason)
    assert chosen.to_dict() == {"asked": asked, "chosen": "bf16" if bf16 else "fp32", "reason": reason}


# --- students ----------------------------------------------------------------------------------------------------


def test_distilbert_student_copies_the_chosen_teacher_layers(tmp_path):
    teacher = load_torch_qa_model(make_tiny_qa_model(tmp_path / "t", layers=6))
    assert teacher_layers(StudentSpec(num_hidden_layers=3), 6) == (0, 2, 4)  # every other one by default
    student = build_student(StudentSpec(layers=(1, 5)), teacher)
    assert student.config.num_hidden_layers == 2
    s, t = student.state_dict(), teacher.state_dict()
    for i, j in enumerate((1, 5)):
        key = "bert.encoder.layer.{}.attention.self.query.weight"
        assert torch.equal(s[key.format(i)], t[key.format(j)])
    assert torch.equal(s["qa_outputs.weight"], t["qa_outputs.weight"])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])


def test_tinybert_student_copies_only_what_fits(tmp_path):
    teacher = load_torch_qa_model(make_tiny_qa_model(tmp_path / "t", layers=4, hidden=32, heads=4))
    narrow = build_student(StudentSpec(num_hidden_layers=2, intermediate_size=48), teacher)
    s, t = narrow.state_dict(), teacher.state_dict()
    assert s["bert.encoder.layer.0.intermediate.dense.weight"].shape == (48, 32)
    assert torch.equal(
        s["bert.encoder.layer.1.attention.self.key.weight"], t["bert.encoder.layer.1.attention.self.key.weight"]
    )
    thin = build_student(StudentSpec(num_hidden_layers=2, hidden_size=16, num_attention_heads=4), teacher)
    assert thin.config.hidden_size == 16
    assert default_layer_map(2, 4) == {0: 1, 1: 3} and default_layer_map(3, 6) == {0: 1, 1: 3, 2: 5}


@pytest.mark.parametrize(
    "spec, message",
    [
        (StudentSpec(layers=(0, 9)), "do not exist"),
        (StudentSpec(num_hidden_layers=5), "only 4 to initialise"),
        (StudentSpec(hidden_size=30, num_attention_heads=4), "not divisible"),
    ],
)
def test_impossible_students_are_refused_from_the_config(tmp_path, spec, message):
    teacher = load_torch_qa_model(make_tiny_qa_model(tmp_path / "t", layers=4))
    with pytest.raises(EdgeQAError, match=message):
        student_config(spec, teacher.config)


def test_only_a_student_initialised_from_the_teacher_is_bound_to_its_depth(tmp_path):
    teacher = load_torch_qa_model(make_tiny_qa_model(tmp_path / "t", layers=4)).config
    assert student_config(StudentSpec(num_hidden_layers=6, init="random"), teacher).num_hidden_layers == 6
    assert student_config(StudentSpec(num_hidden_layers=6, hidden_size=16), teacher).num_hidden_layers == 6  # narrower
    with pytest.raises(EdgeQAError, match="student has 6 layers but the teacher only 4 to initialise them from"):
        student_config(StudentSpec(num_hidden_layers=6), teacher)


# --- refusals before training --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "student, loss, message",
    [
        ("{layers: [0, 7]}", "{hard: 1.0}", "do not exist"),
        ("{num_hidden_layers: 6}", "{hard: 1.0}", "only 4 to initialise"),
        ("{hidden_size: 30, num_attention_heads: 4, num_hidden_layers: 2}", "{hard: 1.0}", "not divisible"),
        ("{layers: [0, 2]}", "{hidden: 1.0, layer_map: {0: 1, 2: 3}}", "student layer 2"),
        ("{layers: [0, 2]}", "{hidden: 1.0, layer_map: {0: 1, 1: 8}}", "teacher layer 8"),
        ("{num_hidden_layers: 2, num_attention_heads: 2}", "{attention: 1.0}", "as many heads"),
    ],
)
def test_bad_distill_specs_fail_with_file_and_line_before_training(
    tmp_path, toy_train, toy_squad, capsys, student, loss, message
):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=4)
    block = f"student: {student}\ntrain: {{data: TRAIN}}\nstages:\n  - {{loss: {loss}}}\n"
    path = _recipe(tmp_path, teacher, toy_train, toy_squad, block)
    assert main(["distill", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert message in err and f"{path}:6" in err
    assert not (tmp_path / "runs" / "d" / "work").exists()


def test_teacher_without_qa_head_is_refused(tmp_path, toy_train, toy_squad, capsys):
    encoder = make_tiny_qa_model(tmp_path / "encoder", qa_head=False)
    path = _recipe(tmp_path, encoder, toy_train, toy_squad, "student: {layers: [0]}\ntrain: {data: TRAIN}\n")
    assert main(["distill", str(path), "--out", str(tmp_path / "runs")]) == 2
    assert "not a question-answering model" in capsys.readouterr().err


def test_cache_of_other_tokenisation_is_refused_before_training(tmp_path, toy_train, toy_squad, capsys):
    teacher = make_tiny_qa_model(tmp_path / "teacher", layers=2)
    cache = tmp_path / "my-cache"
    block = """\
    student: {layers: [0]}
    train: {data: TRAIN, batch_size: 8, precision: fp32, cache: CACHE, checkpoint_every: 50}
    stages:
      - {loss: {soft: 1.0}, max_steps: 1}
    """.replace("CACHE", str(cache))
    first = _recipe(tmp_path, teacher, toy_train, toy_squad, block, name="a", qa="{max_length: 64, doc_stride: 8}")
    run_recipe(first, tmp_path / "runs")
    assert (cache / "meta.json").exists()
    second = _recipe(tmp_path, teacher, toy_train, toy_squad, block, name="b", qa="{max_length: 32, doc_stride: 8}")
    assert main(["distill", str(second), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "teacher cache was built with other settings" in err and "max_length" in err
    assert not (tmp_path / "runs" / "b" / "work" / "student" / "checkpoint.pt").exists()


def test_the_learning_rate_warms_up_linearly_then_falls_linearly_to_zero():
    from edgeqa.compress.train_loop import make_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = make_scheduler(opt, total=10, warmup=0.2).lr_lambdas[0]  # 2 warm-up steps, then 8 down to zero
    assert [factor(s) for s in range(11)] == [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0]
    assert make_scheduler(opt, total=4, warmup=0.0).lr_lambdas[0](0) == 1.0  # no warm-up: full rate at once


def test_a_distill_config_survives_its_record():
    from edgeqa.compress.train_config import DistillConfig

    stages = [{"loss": {"hard": 1.0}, "max_steps": 5}, {"loss": {"soft": 1.0}, "max_steps": 7, "lr": 1e-4}]
    raw = {"student": {"layers": [0, 2]}, "train": {"data": "train.json", "batch_size": 8}, "stages": stages}
    cfg = DistillConfig.from_dict(raw)
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    assert [s.max_steps for s in cfg.stages] == [5, 7] and cfg.stages[1].lr == 1e-4
