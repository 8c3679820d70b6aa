"""The training-step timer (`python -m edgeqa.compress.step_time`), run by hand to see what dropout costs a CPU
step: checked on the models the loop's own step receives, never on timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TOY_QAS, make_tiny_qa_model, write_squad
from edgeqa.compress import forward, step_time


@pytest.fixture
def toy_train(tmp_path) -> Path:
    """48 answered questions: a few batches of 4 windows."""
    return write_squad(tmp_path / "train.json", TOY_QAS * 16)


def _dropout_rates(model: torch.nn.Module) -> frozenset[float]:
    """Every dropout rate in `model`: nn.Dropout modules and the float rates attention modules pass to SDPA."""
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    for m in model.modules():
        rates |= {
            getattr(m, n) for n in ("dropout_prob", "attention_dropout") if isinstance(getattr(m, n, None), float)
        }
    return frozenset(rates)


def test_step_timer_times_every_dropout_setting_on_the_loops_own_step(tmp_path, toy_train, capsys, monkeypatch):
    """Checked on the models the loop's step receives, not on profiler operator names: those depend on the kernels
    a CPU gets (an AVX2-only EPYC showed no `bernoulli` among them), and timings on the machine's load."""
    assert step_time.micro_step is forward.micro_step  # the training loop's own step is what is timed
    seen: dict[int, list[tuple[bool, frozenset[float]]]] = {}

    def watched(model, *args, **kwargs):
        seen.setdefault(id(model), []).append((model.training, _dropout_rates(model)))
        return forward.micro_step(model, *args, **kwargs)

    monkeypatch.setattr(step_time, "micro_step", watched)
    model = make_tiny_qa_model(tmp_path / "m")  # BERT's default rates: 0.1 hidden and attention dropout
    args = ["--model", str(model), "--data", str(toy_train), "--sparsity", "0.5", "--batch-size", "4"]
    step_time.main([*args, "--steps", "2", "--rounds", "2", "--profile"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["seconds_per_step"]) == {"model's", "0.0"} and all(v > 0 for v in out["seconds_per_step"].values())
    # One model per setting, each stepped in training mode 3 (burn-in) + 2 x 2 (rounds) + 2 (profiled) times, one
    # at the model's own dropout everywhere, the other with every dropout at 0.
    assert sorted(len(calls) for calls in seen.values()) == [9, 9]
    assert all(len(set(calls)) == 1 for calls in seen.values())
    assert {calls[0] for calls in seen.values()} == {(True, frozenset({0.1})), (True, frozenset({0.0}))}
    # The profile: each setting's costliest operators (at most six), as shares of that setting's own time.
    assert set(out["cpu_share"]) == {"model's", "0.0"}
    for shares in out["cpu_share"].values():
        assert 1 <= len(shares) <= 6 and all(isinstance(op, str) and op for op in shares)
        assert all(0 <= v <= 1 for v in shares.values()) and 0 < sum(shares.values()) <= 1.01


def test_the_timer_command_times_the_models_own_dropout_beside_none_with_its_defaults(monkeypatch, capsys):
    seen = []

    def timed(model, data, dropouts, sparsity, batch_size, steps, rounds, profile):
        seen.append((model, data, dropouts, sparsity, batch_size, steps, rounds, profile, torch.get_num_threads()))
        return {"seconds_per_step": {"model's": 0.5, "0.0": 0.25}}

    monkeypatch.setattr(step_time, "time_steps", timed)
    threads = torch.get_num_threads()
    try:
        step_time.main(["--model", "m", "--data", "d"])
        out = capsys.readouterr().out
        step_time.main(["--model", "m", "--data", "d", "--sparsity", "0.8", "--batch-size", "4", "--steps", "5",
                        "--rounds", "7", "--threads", "1", "--profile"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    # defaults: no masks, batch 16, 10 steps a round, 3 rounds, 2 threads (the machines' cores), no profile
    assert seen == [("m", "d", [None, 0.0], 0.0, 16, 10, 3, False, 2), ("m", "d", [None, 0.0], 0.8, 4, 5, 7, True, 1)]
    assert json.loads(out) == {"seconds_per_step": {"model's": 0.5, "0.0": 0.25}, "batch_size": 16, "sparsity": 0.0}
    with pytest.raises(SystemExit):  # a model and a training file are required
        step_time.main(["--model", "m"])


def test_each_setting_gets_the_median_of_its_rounds_seconds_per_step(tmp_path, toy_train, monkeypatch):
    from types import SimpleNamespace

    from edgeqa.compress.devices import precision_for

    # rounds 1 and 2, each setting in turn: the model's dropout, then none; each reading pair is one setting's round
    ticks = iter([0.0, 0.2, 0.2, 0.3, 0.3, 0.7, 0.7, 0.8])
    monkeypatch.setattr(step_time, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    model = make_tiny_qa_model(tmp_path / "m")
    out = step_time.time_steps(str(model), str(toy_train), [None, 0.0], batch_size=4, steps=2, rounds=2, burn_in=1)
    # the model's: 0.2 / 2 and 0.4 / 2 per step, median 0.15; none: 0.1 / 2 twice
    assert out["seconds_per_step"] == {"model's": 0.15, "0.0": 0.05}
    assert out["precision"] == precision_for("auto", "cpu").to_dict() and "cpu_share" not in out
