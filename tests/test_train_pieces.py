"""The training loop's pieces, each against values worked out by hand: optimiser groups, step counts, the student's
plan, the trainee's projection and taps, the throughput meter and log lines, the step loader, and the dev-subset
score. Whole runs of the loop are in test_train_loop.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_train_loop import _cfg

from conftest import make_tiny_qa_model
from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model, model_input_names
from edgeqa.bench.evaluate import evaluate
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.squad import load_squad
from edgeqa.compress import train, train_eval, train_loop
from edgeqa.compress.losses import LossConfig
from edgeqa.compress.student import StudentSpec
from edgeqa.compress.train_config import DistillConfig, Hooks, Stage, TrainConfig
from edgeqa.compress.trainset import load_trainset


def test_optimizer_groups_exempt_biases_and_layer_norms_from_weight_decay_and_skip_frozen_weights(tmp_path):
    model = load_torch_qa_model(make_tiny_qa_model(tmp_path / "m"))
    model.get_input_embeddings().weight.requires_grad_(False)
    opt = train_loop.make_optimizer(model, 3e-4, 0.05)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert (decay["weight_decay"], no_decay["weight_decay"], decay["lr"], no_decay["lr"]) == (0.05, 0.0, 3e-4, 3e-4)
    decayed = sorted(names[id(p)] for p in decay["params"])
    exempt = sorted(names[id(p)] for p in no_decay["params"])
    matrices = [n for n, p in model.named_parameters() if p.ndim == 2 and "word_embeddings" not in n]
    assert decayed == sorted(matrices)  # position and token-type embeddings, every dense weight, the QA head's
    assert exempt == sorted(n for n, p in model.named_parameters() if p.ndim == 1)  # biases, LayerNorm weights
    assert "bert.embeddings.word_embeddings.weight" not in decayed + exempt  # frozen: in no group


@pytest.mark.parametrize(
    "stage, windows, steps",
    [
        ({"epochs": 1.0}, 50, 6),  # 50 // 8 = 6 full batches per epoch
        ({"epochs": 2.5}, 50, 15),
        ({"epochs": 0.5}, 50, 3),
        ({"epochs": 0.01}, 50, 1),  # round(0.06) = 0: at least one step
        ({"max_steps": 7, "epochs": 0.5}, 50, 7),  # max_steps overrides epochs
        ({"epochs": 1.0}, 8, 1),
    ],
)
def test_a_stage_runs_its_epochs_of_full_batches_or_its_max_steps(stage, windows, steps):
    assert train._steps(Stage(loss=LossConfig(hard=1.0), **stage), windows, 8) == steps


def test_fewer_windows_than_one_batch_are_refused_by_name():
    with pytest.raises(EdgeQAError) as e:
        train._steps(Stage(loss=LossConfig(hard=1.0)), 7, 8)
    assert str(e.value) == "train.batch_size 8 is larger than the 7 training windows"


def test_the_student_plan_maps_layers_only_for_transfer_and_refuses_what_cannot_transfer(tmp_path):
    teacher = load_torch_qa_model(make_tiny_qa_model(tmp_path / "t", layers=6, heads=4)).config
    hard, hidden = {"loss": {"hard": 1.0}}, {"loss": {"hidden": 1.0}}
    given = {"loss": {"attention": 1.0, "layer_map": {0: 0, 1: 5}}}
    spec = {"student": {"layers": [0, 2]}, "train": {"data": "t.json"}, "stages": [hard, hidden, given]}
    s_cfg, maps = train.check_student(DistillConfig.from_dict(spec), teacher)
    assert s_cfg.num_hidden_layers == 2
    assert maps == [{}, {0: 2, 1: 5}, {0: 0, 1: 5}]  # TinyBERT's uniform map: the last teacher layer of each block
    pretrained = {**spec, "student": {"pretrained": str(make_tiny_qa_model(tmp_path / "p"))}, "stages": [hard, hidden]}
    with pytest.raises(EdgeQAError) as e:  # a pretrained student needs no teacher, but hidden-state transfer does
        train.check_student(DistillConfig.from_dict(pretrained), None)
    assert str(e.value) == "stage 1: intermediate-layer transfer needs a teacher"
    narrow = {**spec, "student": {"num_hidden_layers": 2, "num_attention_heads": 2, "init": "random"}}
    assert train.check_student(DistillConfig.from_dict({**narrow, "stages": [hard, hidden]}), teacher)[1][1] == {
        0: 2,
        1: 5,
    }  # hidden states transfer at any head count
    with pytest.raises(EdgeQAError) as e:
        train.check_student(DistillConfig.from_dict(narrow), teacher)
    assert str(e.value) == "stage 2: attention transfer needs as many heads in the student (2) as in the teacher (4)"
    bad = {**spec, "stages": [{"loss": {"hidden": 1.0, "layer_map": {0: 6}}}]}
    with pytest.raises(EdgeQAError, match="stage 0 layer_map"):
        train.check_student(DistillConfig.from_dict(bad), teacher)


def test_a_plan_that_needs_a_teacher_refuses_to_start_without_one(tmp_path):
    cfg = DistillConfig(StudentSpec(layers=(0,)), TrainConfig(data="t.json"), (Stage(LossConfig(hard=1.0)),))
    with pytest.raises(EdgeQAError) as e:
        train.check_plan(cfg, None)
    assert str(e.value) == "these losses or this student need a teacher, and none was given"
    folder = make_tiny_qa_model(tmp_path / "t")
    teacher, tokenizer, s_cfg, maps = train.check_plan(cfg, folder)
    assert teacher.config.num_hidden_layers == 2 and s_cfg.num_hidden_layers == 1 and maps == [{}]
    assert tokenizer.vocab == load_tokenizer(folder).vocab


def test_the_trainee_projects_a_narrow_students_hidden_states_and_taps_the_mapped_layers(tmp_path, toy_train):
    teacher = load_torch_qa_model(make_tiny_qa_model(tmp_path / "t", layers=4, hidden=32, heads=4))
    spec = {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 4, "init": "random"}
    stages = [{"loss": {"hidden": 1.0, "attention": 1.0, "layer_map": {0: 1, 1: 3}}}, {"loss": {"hard": 1.0}}]
    train_settings = {"data": str(toy_train), "seed": 7, "dropout": 0.0, "freeze_word_embeddings": True}
    cfg = DistillConfig.from_dict({"student": spec, "train": train_settings, "stages": stages})
    s_cfg, maps = train.check_student(cfg, teacher.config)
    prepared = []
    hooks = Hooks(prepare=lambda student, trainset: prepared.append((student, trainset)))
    trainee, taps = train._build_trainee(cfg, teacher, s_cfg, maps, "the trainset", hooks, "cpu")
    assert prepared == [(trainee.student, "the trainset")]
    torch.manual_seed(7)  # the projection is drawn from the training seed
    expected = torch.nn.Linear(16, 32)
    assert torch.equal(trainee.projection.weight, expected.weight) and torch.equal(
        trainee.projection.bias, expected.bias
    )
    assert sorted(trainee.taps.q) == [] and trainee.taps is not None  # filled on the first forward pass
    assert taps is not None and taps.heads == 4
    inputs = {"input_ids": torch.tensor([[2, 7, 8, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    out = trainee(inputs, hidden=True, scores=True)
    teacher(**inputs)
    assert sorted(out["scores"]) == [0, 1] and sorted(taps.q) == [1, 3]  # student layers 0, 1; teacher 1, 3
    assert [h.shape[-1] for h in out["hidden"]] == [32] * 3  # embeddings and 2 layers, projected to 32
    assert not trainee.student.get_input_embeddings().weight.requires_grad
    assert {m.p for m in trainee.student.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    same_width = {**spec, "hidden_size": 32}
    cfg = DistillConfig.from_dict({"student": same_width, "train": {"data": str(toy_train)}, "stages": stages})
    s_cfg, maps = train.check_student(cfg, teacher.config)
    assert train._build_trainee(cfg, teacher, s_cfg, maps, None, Hooks(), "cpu")[0].projection is None
    hard_only = DistillConfig.from_dict({"student": spec, "train": {"data": str(toy_train)}, "stages": stages[1:]})
    trainee, taps = train._build_trainee(hard_only, teacher, *train.check_student(hard_only, teacher.config), None,
                                         Hooks(), "cpu")  # fmt: skip
    assert (trainee.projection, trainee.taps, taps) == (None, None, None)
    assert {m.p for m in trainee.student.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}  # the model's own


def test_the_meter_counts_windows_per_second_since_its_last_reset(monkeypatch):
    now = iter([10.0, 14.0, 15.0, 15.0])
    monkeypatch.setattr(train_loop.time, "perf_counter", lambda: next(now))
    meter = train_loop._Meter()  # 10.0
    meter.windows = 32
    assert meter.rate() == 8.0  # 32 windows in 4 s
    meter.reset()  # 15.0
    assert (meter.windows, meter.since) == (0, 15.0)
    meter.windows = 5
    assert meter.rate() == 5 / 1e-9  # no time passed: no division by zero


def test_a_log_line_gives_each_term_per_window_and_resets_the_meter(monkeypatch):
    now = iter([0.0, 2.0, 2.0])
    monkeypatch.setattr(train_loop.time, "perf_counter", lambda: next(now))
    meter = train_loop._Meter()
    meter.windows = 20
    bar = SimpleNamespace(postfix=None)
    bar.set_postfix = lambda **kw: setattr(bar, "postfix", kw)
    run = SimpleNamespace(history=[])
    kept = {"loss": [torch.tensor(6.0), torch.tensor(2.0)], "hard": [torch.tensor(4.0), torch.tensor(1.0)]}
    train_loop._log_step(run, bar, meter, 1, 7, 5e-4, kept, 8)
    # loss (6 + 2) / 8 = 1.0; hard (4 + 1) / 8 = 0.625; 20 windows in 2 s
    assert run.history == [{"stage": 1, "step": 7, "lr": 5e-4, "windows_per_s": 10.0, "loss": 1.0, "hard": 0.625}]
    assert bar.postfix == {"loss": "1.000", "win_s": "10.0"}
    assert (meter.windows, meter.since) == (0, 2.0)


def test_write_log_keeps_one_json_line_per_entry(tmp_path):
    history = [{"stage": 0, "step": 2, "loss": 1.5}, {"stage": 0, "step": 2, "eval": {"f1": 3.0}}]
    train_loop.write_log(tmp_path, history)
    assert (tmp_path / "train_log.jsonl").read_text() == "".join(json.dumps(h) + "\n" for h in history)


def test_the_dev_subset_score_in_training_is_the_score_edgeqa_eval_gives(tmp_path, toy_squad, monkeypatch):
    folder = make_tiny_qa_model(tmp_path / "m", seed=3)
    model = load_torch_qa_model(folder)
    examples = load_squad(toy_squad).examples
    batch_sizes = []
    real = train_eval.QAModel.answer

    def answer(self, examples, cfg, batch_size, progress):
        batch_sizes.append(batch_size)
        return real(self, examples, cfg, batch_size=batch_size, progress=progress)

    expected = evaluate(folder, toy_squad, cfg=QAConfig(max_length=32, doc_stride=8), progress=False)
    assert 0 < expected["f1"] < 100 and expected["f1"] != round(expected["f1"], 3)  # rounding shows
    monkeypatch.setattr(train_eval.QAModel, "answer", answer)
    tc = TrainConfig(data="unused", max_length=32, doc_stride=8)
    got = train_eval.score_student(model, load_tokenizer(folder), examples, model_input_names(model), tc)
    assert got == {"exact": round(expected["exact_match"], 3), "f1": round(expected["f1"], 3), "questions": 3}
    assert batch_sizes == [32]  # windows per pass on the CPU
    assert not model.training  # scored in inference mode; the loop puts it back to training itself


def test_the_loader_pads_ahead_in_workers_into_pinned_memory_only_on_cuda(tmp_path, toy_train, monkeypatch):
    ts = load_trainset(toy_train, None, load_tokenizer(make_tiny_qa_model(tmp_path / "m")), QAConfig())
    cfg = _cfg(toy_train, [{"loss": {"soft": 1.0}}, {"loss": {"hidden": 1.0, "soft": 1.0}}], micro_batch_size=3)
    logits = np.zeros((len(ts), 2, 384), dtype=np.float16)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)

    def loader(device: str, si: int = 0):
        dist = train_loop.Dist(device=device)
        run = SimpleNamespace(tc=cfg.train, dist=dist, cfg=cfg, trainset=ts, logits=logits, pad_id=0)
        return train_loop._step_loader(run, si, 2, 6)

    cpu = loader("cpu")
    assert (cpu.num_workers, cpu.pin_memory, cpu.prefetch_factor) == (0, False, None)
    assert "TOKENIZERS_PARALLELISM" not in train_loop.os.environ
    assert len(cpu) == 4 and cpu.dataset.logits is logits  # steps 2 to 6; a predictions-only stage reads the cache
    assert [len(m["labels"]) for m in next(iter(cpu))] == [3, 3, 2]
    assert loader("cpu", si=1).dataset.logits is None  # beside hidden states the teacher runs along: no cache
    gpu = loader("cuda:1")
    assert (gpu.num_workers, gpu.pin_memory, gpu.prefetch_factor) == (train_loop.LOADER_WORKERS, True, 4)
    assert train_loop.os.environ["TOKENIZERS_PARALLELISM"] == "false"  # forked workers never tokenise
