"""Students from a teacher: the spec's checks, which teacher layer starts each student layer, which tensors are
copied, and TinyBERT's layer map; every expected value by hand from the teacher's shape."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_qa_model
from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.student import (
    StudentSpec,
    build_student,
    check_layer_map,
    default_layer_map,
    save_student,
    student_config,
    teacher_layers,
)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from transformers import AutoModelForQuestionAnswering

    folder = make_tiny_qa_model(tmp_path_factory.mktemp("t") / "teacher", layers=4, hidden=32, heads=4)
    return AutoModelForQuestionAnswering.from_pretrained(folder)


@pytest.mark.parametrize(
    ("spec", "message"),
    [({"init": "zeros"}, "student init must be 'teacher' or 'random', got 'zeros'"),
     ({"layers": []}, "student layers must name at least one teacher layer"),
     ({"layers": [0, 2], "num_hidden_layers": 3}, "student num_hidden_layers=3 but layers names 2 layers"),
     ({"hidden_size": 0}, "student hidden_size must be a positive integer, got 0"),
     ({"intermediate_size": 1.5}, "student intermediate_size must be a positive integer, got 1.5"),
     ({"num_attention_heads": -2}, "student num_attention_heads must be a positive integer, got -2"),
     ({"pretrained": "enc", "layers": [0]},
      "a pretrained student takes its shape from its folder; drop layers and sizes"),
     ({"pretrained": "enc", "num_hidden_layers": 2},
      "a pretrained student takes its shape from its folder; drop layers and sizes")],
)  # fmt: skip
def test_an_impossible_spec_is_refused_by_its_words(spec, message):
    with pytest.raises(EdgeQAError) as e:
        StudentSpec(**spec)
    assert str(e.value) == message


def test_a_spec_reads_its_layers_as_whole_numbers_and_knows_when_it_is_narrower():
    assert StudentSpec(layers=("1", 3.0)).layers == (1, 3) and StudentSpec(layers=[0, 2], num_hidden_layers=2)
    assert not StudentSpec(num_hidden_layers=3).narrower
    for key in ("hidden_size", "num_attention_heads", "intermediate_size"):
        assert StudentSpec(**{key: 8}).narrower
    assert StudentSpec(pretrained="enc").pretrained == "enc" and StudentSpec(init="random").init == "random"


@pytest.mark.parametrize(
    ("spec", "layers"),
    [({}, (0, 1, 2, 3, 4, 5)), ({"num_hidden_layers": 3}, (0, 2, 4)), ({"num_hidden_layers": 2}, (0, 3)),
     ({"num_hidden_layers": 4}, (0, 2, 3, 4)),  # 0, 1.5, 3, 4.5 rounded half to even
     ({"layers": [5, 0]}, (5, 0)), ({"init": "random"}, None), ({"hidden_size": 128}, None),
     ({"pretrained": "enc"}, None)],
)  # fmt: skip
def test_which_teacher_layer_starts_each_student_layer(spec, layers):
    assert teacher_layers(StudentSpec(**spec), 6) == layers


def test_a_student_layer_the_teacher_lacks_is_refused():
    with pytest.raises(EdgeQAError) as e:
        teacher_layers(StudentSpec(layers=[1, 6, -1]), 6)
    assert str(e.value) == "student layers [6, -1] do not exist: the teacher has layers 0..5"
    with pytest.raises(EdgeQAError) as e:
        teacher_layers(StudentSpec(num_hidden_layers=7), 6)
    assert str(e.value) == "student has 7 layers but the teacher only 6 to initialise them from"


def test_a_students_config_is_the_teachers_with_the_spec_applied(teacher):
    config = student_config(StudentSpec(num_hidden_layers=2, intermediate_size=48), teacher.config)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (
        2, 32, 4, 48)  # fmt: skip
    assert teacher.config.num_hidden_layers == 4 and teacher.config.intermediate_size == 128  # the teacher untouched
    assert student_config(StudentSpec(layers=[3, 1, 0]), teacher.config).num_hidden_layers == 3
    deeper = student_config(StudentSpec(num_hidden_layers=6, init="random"), teacher.config)
    assert deeper.num_hidden_layers == 6  # random: nothing to copy, any depth
    wide = student_config(StudentSpec(num_hidden_layers=6, hidden_size=64, num_attention_heads=8), teacher.config)
    assert (wide.num_hidden_layers, wide.hidden_size) == (6, 64)  # narrower-style shapes copy what fits


@pytest.mark.parametrize(
    ("spec", "message"),
    [({"num_hidden_layers": 5}, "student has 5 layers but the teacher only 4 to initialise them from"),
     ({"hidden_size": 30}, "student hidden_size 30 is not divisible by num_attention_heads 4"),
     ({"num_attention_heads": 3}, "student hidden_size 32 is not divisible by num_attention_heads 3")],
)  # fmt: skip
def test_a_student_the_teacher_cannot_make_is_refused(teacher, spec, message):
    with pytest.raises(EdgeQAError) as e:
        student_config(StudentSpec(**spec), teacher.config)
    assert str(e.value) == message


def test_a_student_needs_a_bert_teacher_or_a_readable_pretrained_folder(tmp_path):
    from transformers import DistilBertConfig

    with pytest.raises(EdgeQAError) as e:
        student_config(StudentSpec(), None)
    assert str(e.value) == "a student built from a teacher needs the teacher; give `from` or a `pretrained` folder"
    with pytest.raises(EdgeQAError) as e:
        student_config(StudentSpec(), DistilBertConfig())
    assert str(e.value) == ("students are built from bert teachers; this teacher is 'distilbert' (give a `pretrained` "
                            "student instead)")  # fmt: skip
    with pytest.raises(EdgeQAError, match=rf"^{tmp_path / 'none'}: cannot read the pretrained student's config: "):
        student_config(StudentSpec(pretrained=str(tmp_path / "none")), None)
    with pytest.raises(EdgeQAError, match=rf"^{tmp_path / 'none'}: cannot load as a QA student: "):
        build_student(StudentSpec(pretrained=str(tmp_path / "none")))


def _layer(model, i):
    return model.bert.encoder.layer[i].attention.self.query.weight


def test_a_distilbert_style_student_copies_the_layers_it_names(teacher):
    student = build_student(StudentSpec(layers=[3, 1]), teacher)
    assert student.config.num_hidden_layers == 2
    assert torch.equal(_layer(student, 0), _layer(teacher, 3)) and torch.equal(_layer(student, 1), _layer(teacher, 1))
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["bert.encoder.layer.0.output.dense.weight"], t["bert.encoder.layer.3.output.dense.weight"])
    for name in ("bert.embeddings.word_embeddings.weight", "qa_outputs.weight", "qa_outputs.bias"):
        assert torch.equal(s[name], t[name])


def test_a_narrower_student_copies_only_the_tensors_of_the_teachers_shape(teacher):
    student = build_student(StudentSpec(num_hidden_layers=2, intermediate_size=16), teacher)
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["bert.encoder.layer.1.attention.self.query.weight"],
                       t["bert.encoder.layer.1.attention.self.query.weight"])  # fmt: skip
    assert s["bert.encoder.layer.0.intermediate.dense.weight"].shape == (16, 32)  # not the teacher's 128: fresh
    assert torch.equal(s["qa_outputs.weight"], t["qa_outputs.weight"])


def test_a_random_student_copies_nothing_and_its_seed_decides_it(teacher):
    a = build_student(StudentSpec(num_hidden_layers=2, init="random"), teacher, seed=1)
    b = build_student(StudentSpec(num_hidden_layers=2, init="random"), teacher, seed=1)
    c = build_student(StudentSpec(num_hidden_layers=2, init="random"), teacher, seed=2)
    assert torch.equal(_layer(a, 0), _layer(b, 0)) and not torch.equal(_layer(a, 0), _layer(c, 0))
    assert not torch.equal(_layer(a, 0), _layer(teacher, 0))
    assert not torch.equal(a.qa_outputs.weight, teacher.qa_outputs.weight)


def test_a_saved_student_names_its_architecture(teacher, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from conftest import _tokenizer

    student = build_student(StudentSpec(layers=[0]), teacher)
    student.config.architectures = None
    (tmp_path / "tok").mkdir()
    save_student(student, _tokenizer("bert", tmp_path / "tok"), tmp_path / "s")
    assert AutoConfig.from_pretrained(tmp_path / "s").architectures == ["BertForQuestionAnswering"]
    assert AutoTokenizer.from_pretrained(tmp_path / "s").is_fast


@pytest.mark.parametrize(
    ("n_student", "n_teacher", "expected"),
    [(3, 6, {0: 1, 1: 3, 2: 5}), (4, 6, {0: 0, 1: 2, 2: 3, 3: 5}), (2, 2, {0: 0, 1: 1}), (1, 12, {0: 11})],
)
def test_tinyberts_uniform_layer_map(n_student, n_teacher, expected):
    """Student layer i imitates teacher layer (i + 1) n_teacher // n_student - 1: the last of its block."""
    assert default_layer_map(n_student, n_teacher) == expected


def test_a_layer_map_naming_a_missing_layer_is_refused():
    check_layer_map({0: 0, 2: 5}, n_student=3, n_teacher=6)
    for layer_map, message in (
        ({3: 1}, "stage 1 names student layer 3, but the student has layers 0..2"),
        ({-1: 1}, "stage 1 names student layer -1, but the student has layers 0..2"),
        ({0: 6}, "stage 1 names teacher layer 6, but the teacher has layers 0..5"),
        ({0: -1}, "stage 1 names teacher layer -1, but the teacher has layers 0..5"),
    ):
        with pytest.raises(EdgeQAError) as e:
            check_layer_map(layer_map, 3, 6, where="stage 1")
        assert str(e.value) == message
    with pytest.raises(EdgeQAError, match=r"^layer_map names student layer 3"):
        check_layer_map({3: 0}, 3, 6)


# --- the distill section: stages and training settings, each refusal by its words ---------------------------------


@pytest.mark.parametrize(
    ("stage", "message"),
    [({"epochs": 0}, "a stage needs epochs > 0 or max_steps >= 1, got 0 and None"),
     ({"max_steps": 0}, "a stage needs epochs > 0 or max_steps >= 1, got 1.0 and 0"),
     ({"lr": 0.0}, "stage lr must be positive, got 0.0"),
     ({"warmup": 1.0}, "stage warmup is a share of its steps, in [0, 1), got 1.0"),
     ({"warmup": -0.1}, "stage warmup is a share of its steps, in [0, 1), got -0.1"),
     ({"lr": "fast"}, "stage.lr should be float, got 'fast'")],
)  # fmt: skip
def test_a_stage_that_cannot_run_is_refused(stage, message):
    from edgeqa.compress.losses import LossConfig
    from edgeqa.compress.train_config import Stage

    with pytest.raises(EdgeQAError) as e:
        Stage(LossConfig(hard=1.0), **stage)
    assert str(e.value) == message
    assert Stage(LossConfig(hard=1.0), warmup=0.0, max_steps=1, epochs=0.5).max_steps == 1  # the smallest allowed


@pytest.mark.parametrize(
    ("train", "message"),
    [({"precision": "fp16"}, "precision must be auto, bf16 or fp32, got 'fp16'"),
     ({"batch_size": 0}, "train.batch_size must be positive, got 0"),
     ({"checkpoint_every": 0}, "train.checkpoint_every must be positive, got 0"),
     ({"log_every": 0}, "train.log_every must be positive, got 0"),
     ({"eval_limit": 0}, "train.eval_limit must be positive, got 0"),
     ({"teacher_batch_size": 0}, "train.teacher_batch_size must be positive, got 0"),
     ({"dropout": 1.0}, "train.dropout must be in [0, 1), got 1.0"),
     ({"dropout": -0.5}, "train.dropout must be in [0, 1), got -0.5"),
     ({"limit": 0}, "train.limit must be positive, got 0"),
     ({"eval_every": -1}, "train.eval_every and weight_decay must be >= 0, max_grad_norm > 0"),
     ({"weight_decay": -0.1}, "train.eval_every and weight_decay must be >= 0, max_grad_norm > 0"),
     ({"max_grad_norm": 0.0}, "train.eval_every and weight_decay must be >= 0, max_grad_norm > 0"),
     ({"micro_batch_size": 0}, "train.micro_batch_size must be positive, got 0"),
     ({"seed": "0"}, "train.seed should be int, got '0'")],
)  # fmt: skip
def test_training_settings_out_of_range_are_refused(train, message):
    from edgeqa.compress.train_config import TrainConfig

    with pytest.raises(EdgeQAError) as e:
        TrainConfig(data="train.json", **train)
    assert str(e.value) == message


def test_the_smallest_training_settings_are_allowed_and_the_window_follows_them():
    from edgeqa.compress.train_config import TrainConfig

    cfg = TrainConfig(data="t", batch_size=1, checkpoint_every=1, log_every=1, eval_limit=1, teacher_batch_size=1,
                      dropout=0.0, limit=1, eval_every=0, weight_decay=0.0, micro_batch_size=1, max_length=64,
                      doc_stride=16)  # fmt: skip
    assert (cfg.qa.max_length, cfg.qa.doc_stride) == (64, 16)
    with pytest.raises(EdgeQAError):  # the window is checked as QAConfig checks it
        TrainConfig(data="t", max_length=64, doc_stride=64)


def test_a_distill_section_reads_one_loss_or_stages_and_refuses_the_rest():
    from edgeqa.compress.train_config import DistillConfig

    one = DistillConfig.from_dict({"train": {"data": "t"}, "loss": {"soft": 1.0, "hard": 0.0}})
    assert len(one.stages) == 1 and one.stages[0].loss.soft == 1.0 and one.needs_teacher
    plain = DistillConfig.from_dict({"train": {"data": "t"}, "student": {"pretrained": "enc"}})
    assert plain.stages[0].loss.hard == 1.0 and not plain.needs_teacher  # fine-tuning: no teacher at all
    assert DistillConfig.from_dict({"train": {"data": "t"}}).needs_teacher  # a student built from the teacher
    stages = [{"loss": {"hard": 1.0}, "lr": 0.001}, {"loss": {"soft": 1.0}, "epochs": 2.0}]
    two = DistillConfig.from_dict({"train": {"data": "t"}, "stages": stages})
    assert [(s.lr, s.epochs) for s in two.stages] == [(0.001, 1.0), (0.0001, 2.0)]
    assert DistillConfig.from_dict(two.to_dict()) == two
    for raw, message in (
        ({"train": {"data": "t"}, "epochs": 3, "teacher": "x"}, "unknown distill setting(s): epochs, teacher"),
        ({"train": {"data": "t"}, "loss": {}, "stages": []}, "give either one `loss` (a single stage) or `stages`, "
                                                               "not both"),
        ({"train": {}}, "train.data (the SQuAD file to train on) is missing"),
        ({}, "train.data (the SQuAD file to train on) is missing"),
        ({"train": {"data": "t"}, "stages": []}, "distillation needs at least one stage"),  # not a default stage
    ):  # fmt: skip
        with pytest.raises(EdgeQAError) as e:
            DistillConfig.from_dict(raw)
        assert str(e.value) == message


def test_the_edges_of_a_students_shape():
    """1 is the smallest of each size."""
    assert StudentSpec(num_hidden_layers=1, hidden_size=1, num_attention_heads=1, intermediate_size=1).hidden_size == 1


def test_depth_against_the_teacher_and_what_a_build_says(teacher, caplog):
    """The teacher's own depth may be copied whole; a deeper student, even of layers that exist (repeated), has more
    layers than the teacher has to start them from."""
    assert student_config(StudentSpec(num_hidden_layers=4), teacher.config).num_hidden_layers == 4
    with pytest.raises(EdgeQAError) as e:
        student_config(StudentSpec(layers=[0, 0, 1, 1, 2]), teacher.config)
    assert str(e.value) == "student has 5 layers but the teacher only 4 to initialise them from"
    caplog.set_level("INFO", logger="edgeqa.compress.student")
    student = build_student(StudentSpec(layers=[3, 1]), teacher)
    total = len(student.state_dict())
    assert [r.getMessage() for r in caplog.records] == [
        f"student: {total} of {total} tensors copied from the teacher (layers (3, 1))"]  # fmt: skip


def test_settings_name_their_section_and_serialise():
    from edgeqa.compress.losses import LossConfig
    from edgeqa.compress.train_config import DistillConfig, Stage, TrainConfig

    for precision in ("auto", "bf16", "fp32"):
        assert TrainConfig(data="t", precision=precision).precision == precision
    with pytest.raises(EdgeQAError, match=r"^unknown student setting\(s\): depth \(allowed: "):
        StudentSpec.from_dict({"depth": 2})
    with pytest.raises(EdgeQAError, match=r"^unknown train setting\(s\): epochs \(allowed: "):
        DistillConfig.from_dict({"train": {"data": "t", "epochs": 2}})
    with pytest.raises(EdgeQAError, match=r"^unknown stage 1 setting\(s\): decay \(allowed: "):
        DistillConfig.from_dict({"train": {"data": "t"}, "stages": [{"loss": {"hard": 1}}, {"loss": {"hard": 1},
                                                                                           "decay": 0.1}]})  # fmt: skip
    assert TrainConfig(data="t", limit=5).to_dict()["limit"] == 5 and "dropout" not in TrainConfig(data="t").to_dict()
    assert Stage(LossConfig(hard=1.0), lr=0.5).to_dict()["lr"] == 0.5
    assert StudentSpec(layers=[0, 2]).to_dict()["layers"] == [0, 2]
