"""The passes the losses read, checked against values with a known answer: attention scores rebuilt from the
layer's own input and weights, a student identical to its teacher (every transfer term 0), the logit cache's start
and end columns, the teacher as the cache calls it, and where a single process trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_tiny_qa_model
from edgeqa.bench.engines import default_threads, load_torch_qa_model
from edgeqa.compress import devices
from edgeqa.compress.forward import ScoreTaps, Trainee, micro_step, set_dropout, teacher_fn
from edgeqa.compress.losses import LossConfig, span_ce


@pytest.fixture
def model(tmp_path):
    return load_torch_qa_model(make_tiny_qa_model(tmp_path / "m", layers=2, hidden=32, heads=4, dropout=0.0)).eval()


def _batch(teacher_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[2, 10, 11, 3, 12, 13, 14, 3], [2, 15, 3, 16, 17, 3, 0, 0]])
    batch = {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "token_type_ids": torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0]]),
        "labels": torch.tensor([[4, 5], [3, 4]]),
        "windows": torch.tensor([7, 9]),
    }
    if teacher_logits is not None:
        batch["teacher_logits"] = teacher_logits
    return batch


NAMES = ("input_ids", "attention_mask", "token_type_ids")


def test_attention_scores_are_the_layers_query_times_key_over_the_root_of_the_head_width(model):
    taps = ScoreTaps(model, [1])
    inputs = {k: v for k, v in _batch().items() if k in NAMES}
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[1]  # layer 1's input
        attn = model.bert.encoder.layer[1].attention.self
        q = (hidden @ attn.query.weight.T + attn.query.bias).view(2, 8, 4, 8).transpose(1, 2)
        k = (hidden @ attn.key.weight.T + attn.key.bias).view(2, 8, 4, 8).transpose(1, 2)
        expected = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(8)  # 32 wide, 4 heads: 8 per head
    assert sorted(taps.q) == sorted(taps.k) == [1]  # only the layers asked for are tapped
    torch.testing.assert_close(taps.scores(1), expected, rtol=1e-5, atol=1e-5)


def test_a_student_identical_to_its_teacher_has_every_transfer_term_zero(model, tmp_path):
    teacher = model
    model.save_pretrained(tmp_path / "copy")
    student = load_torch_qa_model(tmp_path / "copy")  # dropout 0: training mode computes what the teacher does
    trainee = Trainee(student, None, [0, 1]).train()
    taps = ScoreTaps(teacher, [0, 1])
    loss = LossConfig(hidden=1.0, attention=2.0, embedding=3.0, soft=1.0, temperature=2.0)
    terms = micro_step(trainee, teacher, taps, _batch(), NAMES, loss, {0: 0, 1: 1}, "cpu", False)
    assert set(terms) == {"soft", "embedding", "hidden", "attention", "loss"}
    for name, value in terms.items():
        assert float(value.detach()) == pytest.approx(0.0, abs=1e-8), name
    shifted = {0: 1, 1: 0}  # each student layer against the other teacher layer: no longer zero
    terms = micro_step(trainee, teacher, taps, _batch(), NAMES, loss, shifted, "cpu", False)
    assert float(terms["hidden"].detach()) > 1e-5 and float(terms["attention"].detach()) > 1e-5


def test_cached_logits_are_read_as_start_then_end(model):
    trainee = Trainee(model, None, []).train()
    with torch.no_grad():
        out = model(**{k: v for k, v in _batch().items() if k in NAMES})
    own = torch.stack([out.start_logits, out.end_logits], dim=1)  # (B, 2, L), the cache's layout
    loss = LossConfig(soft=1.0, hard=0.5)
    terms = micro_step(trainee, None, None, _batch(own), NAMES, loss, {}, "cpu", False)
    assert float(terms["soft"].detach()) == pytest.approx(0.0, abs=1e-5)  # the student's own distributions: KL 0
    mask = _batch()["attention_mask"].bool()
    hard = span_ce(out.start_logits, out.end_logits, _batch()["labels"], mask)
    assert float(terms["hard"].detach()) == pytest.approx(float(hard), rel=1e-5)
    assert float(terms["loss"].detach()) == pytest.approx(0.5 * float(hard), rel=1e-5)
    swapped = micro_step(trainee, None, None, _batch(own.flip(1)), NAMES, loss, {}, "cpu", False)
    assert float(swapped["soft"].detach()) > 1e-3  # start and end read the other way round: not the same distributions


def test_the_teacher_as_the_cache_calls_it_gives_float32_numpy_logits(model):
    run = teacher_fn(model, "cpu", bf16=False)
    batch = _batch()
    start, end = run({k: batch[k].numpy() for k in NAMES})
    with torch.no_grad():
        out = model(**{k: batch[k] for k in NAMES})
    assert start.dtype == end.dtype == np.float32
    np.testing.assert_allclose(start, out.start_logits.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(end, out.end_logits.numpy(), rtol=1e-6, atol=1e-6)


def test_set_dropout_reaches_the_rates_attention_hands_to_sdpa_and_leaves_the_config(tmp_path):
    model = load_torch_qa_model(make_tiny_qa_model(tmp_path / "m"))  # BERT's default 0.1 everywhere
    set_dropout(model, 0.25)
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    floats = [m.dropout_prob for m in model.modules() if isinstance(getattr(m, "dropout_prob", None), float)]
    assert rates and set(rates) == {0.25}
    assert len(floats) == 2 and set(floats) == {0.25}  # one SDPA attention module per layer
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.1


def test_one_process_trains_on_the_cpu_with_the_threads_its_share_of_the_machine(monkeypatch):
    for name in ("WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    try:
        assert devices.setup_distributed() == devices.Dist(rank=0, world=1, local_rank=0, device="cpu")
        assert torch.get_num_threads() == default_threads()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on this machine: half the threads each
        monkeypatch.setenv("LOCAL_RANK", "1")
        assert devices.setup_distributed().local_rank == 1
        assert torch.get_num_threads() == max(1, default_threads() // 2)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * default_threads()))
        devices.setup_distributed()
        assert torch.get_num_threads() == 1  # never none
    finally:
        torch.set_num_threads(threads)
    assert devices.Dist(rank=0).main and not devices.Dist(rank=1, world=2).main
    devices.barrier(devices.Dist())  # one process: nothing to wait for (no process group exists)


def test_a_precision_records_what_was_asked_chosen_and_why():
    p = devices.Precision("auto", True, "auto: CPU has amx_bf16")
    assert (p.chosen, devices.Precision("auto", False, "x").chosen) == ("bf16", "fp32")
    assert p.to_dict() == {"asked": "auto", "chosen": "bf16", "reason": "auto: CPU has amx_bf16"}
