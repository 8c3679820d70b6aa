"""Pattern pruning driven from the training loop's hooks: the settings neural-compressor is handed, the blocks it
zeroes over a hand-driven recovery, and its state carried through a checkpoint (whole recipes are in
test_prune_recipes.py)."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.prune_inc import INC_STATE, PatternConfig
from edgeqa.compress.prune_magnitude import prunable_linears
from edgeqa.compress.train_config import DistillConfig

LAYER_0 = ("*encoder.layer.0.*",)


@pytest.fixture
def handed(monkeypatch):
    """neural-compressor's WeightPruningConfig, recording the keywords it is built with."""
    import neural_compressor

    seen: list[dict] = []
    real = neural_compressor.WeightPruningConfig
    monkeypatch.setattr(
        neural_compressor, "WeightPruningConfig", lambda **kw: seen.append(copy.deepcopy(kw)) or real(**kw)
    )
    return seen


def _train(model, hooks, total: int, stage: int = 0) -> None:
    """What the training loop does around each step, with a loss that moves every weight."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    hooks.start_stage(model, optimizer, stage, total)
    ids = torch.arange(5, 17).reshape(2, 6)
    for step in range(total):
        hooks.before_step(stage, step)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        (out.start_logits.pow(2).mean() + out.end_logits.pow(2).mean()).backward()
        hooks.before_optimizer()
        optimizer.step()
        optimizer.zero_grad()
        hooks.after_step(model, stage, step, total)


def test_the_recipes_settings_reach_neural_compressor(tiny, handed):
    cfg = PatternConfig(sparsity=0.5, pattern="4x1", schedule="cubic", ramp=0.5, update_every=2, scope="layer",
                        criterion="snip_momentum", include=LAYER_0, exclude=("*value",))  # fmt: skip
    cfg.hooks().start_stage(tiny, torch.optim.SGD(tiny.parameters(), lr=0.1), 0, 11)
    names = [f"bert.encoder.layer.0.{m}" for m in ("attention.self.query", "attention.self.key",
             "attention.output.dense", "intermediate.dense", "output.dense")]  # fmt: skip
    assert handed == [
        {
            "pruning_configs": [{"op_names": [f"^{re.escape(n)}$" for n in names]}],
            "target_sparsity": 0.5,
            "pattern": "4x1",
            "pruning_type": "snip_momentum",
            "start_step": 0,
            "end_step": 6,  # round(11 x 0.5) = round(5.5): the ramp's last step
            "pruning_frequency": 2,
            "pruning_scope": "local",  # scope: layer
            "sparsity_decay_type": "cube",
        }
    ]
    assert re.fullmatch(handed[0]["pruning_configs"][0]["op_names"][0], names[0])
    assert not re.fullmatch(handed[0]["pruning_configs"][0]["op_names"][0], names[0] + "_lin")


def test_one_shot_pattern_pruning_happens_at_the_first_step(tiny, handed):
    cfg = PatternConfig(sparsity=0.25, pattern="2:4", include=LAYER_0)
    cfg.hooks().start_stage(tiny, torch.optim.SGD(tiny.parameters(), lr=0.1), 0, 9)
    assert {k: handed[0][k] for k in ("target_sparsity", "pattern", "pruning_type", "end_step", "pruning_frequency",
            "pruning_scope", "sparsity_decay_type")} == {  # fmt: skip
        "target_sparsity": 0.25, "pattern": "2:4", "pruning_type": "magnitude", "end_step": 0,
        "pruning_frequency": 1, "pruning_scope": "global", "sparsity_decay_type": "exp",
    }  # fmt: skip


def test_a_ramp_shorter_than_one_step_still_ends_on_a_step(tiny, handed):
    cfg = PatternConfig(pattern="4x1", schedule="cubic", ramp=0.1, update_every=1, include=LAYER_0)
    cfg.hooks().start_stage(tiny, torch.optim.SGD(tiny.parameters(), lr=0.1), 0, 4)  # round(0.4) = 0
    assert handed[0]["end_step"] == 1


def test_recovery_with_the_hooks_zeroes_whole_blocks_of_the_chosen_layers_only(tiny):
    cfg = PatternConfig(sparsity=0.5, pattern="4x1", schedule="cubic", ramp=0.5, update_every=1, include=LAYER_0)
    hooks = cfg.hooks()
    untouched = {n: m.weight.detach().clone() for n, m in prunable_linears(tiny, ("*encoder.layer.1.*",)).items()}
    _train(tiny, hooks, 8)
    zeros = [int((m.weight == 0).sum()) for m in prunable_linears(tiny, LAYER_0).values()]
    total = sum(m.weight.numel() for m in prunable_linears(tiny, LAYER_0).values())
    assert 0.45 < sum(zeros) / total < 0.55
    w = tiny.bert.encoder.layer[0].intermediate.dense.weight  # (128 out, 32 in): 4 output rows per block
    assert set((w.view(32, 4, 32) == 0).sum(1).unique().tolist()) == {0, 4}
    for name, m in prunable_linears(tiny, ("*encoder.layer.1.*",)).items():
        assert not (m.weight == 0).any() and not torch.equal(m.weight, untouched[name])  # trained, not pruned
    assert [hooks.may_keep(0, s, 8) for s in range(8)] == [cfg.at_target(s, 8) for s in range(8)]
    assert hooks.may_keep(0, 7, 8) and not hooks.may_keep(0, 0, 8)
    assert hooks.fingerprint == {"prune": cfg.to_dict()}


def test_the_pruners_state_goes_into_the_checkpoint_and_back(tiny, tmp_path):
    cfg = PatternConfig(sparsity=0.5, pattern="4x1", schedule="cubic", ramp=0.5, update_every=1, include=LAYER_0)
    resumed_model = copy.deepcopy(tiny)
    hooks = cfg.hooks()
    _train(tiny, hooks, 3)
    saved = hooks.state()
    assert len(saved) == 1 and set(saved[0]) <= set(INC_STATE) and {"global_step", "masks"} <= set(saved[0])
    torch.save(saved, tmp_path / "state.pt")
    resumed = cfg.hooks()
    resumed.start_stage(resumed_model, torch.optim.SGD(resumed_model.parameters(), lr=0.1), 0, 3)
    assert resumed.state()[0]["global_step"] != saved[0]["global_step"]
    resumed.load_state(torch.load(tmp_path / "state.pt", weights_only=False))
    back = resumed.state()[0]
    assert back["global_step"] == saved[0]["global_step"] and back.keys() == saved[0].keys()
    for name, mask in saved[0]["masks"].items():
        assert torch.equal(back["masks"][name], mask)
    with pytest.raises(ValueError):  # one pruner saved per pruner held, no more
        resumed.load_state([*saved, *saved])


def test_a_pattern_that_does_not_tile_is_refused_from_the_config_and_at_the_start(tiny):
    PatternConfig(pattern="4x1").check_model(tiny.config)
    with pytest.raises(EdgeQAError) as e:
        PatternConfig(pattern="3x1").check_model(tiny.config)
    assert (
        str(e.value) == "pattern 3x1 does not divide bert.encoder.layer.0.attention.self.query's weight shape (32 x 32)"
    )
    with pytest.raises(EdgeQAError, match=r"^pattern 3x1 does not divide bert\.encoder\.layer\.1\.attention"):
        PatternConfig(pattern="3x1", include=("*encoder.layer.1.*",)).check_model(tiny.config)
    ffn_only = {"include": LAYER_0, "exclude": ("*attention*", "*output.dense")}  # intermediate.dense: 128 x 32
    PatternConfig(pattern="64x1", **ffn_only).check_model(tiny.config)
    with pytest.raises(EdgeQAError, match="pattern 64x1 does not divide"):
        PatternConfig(pattern="64x1", include=LAYER_0).check_model(tiny.config)
    with pytest.raises(EdgeQAError, match="pattern 5x1 does not divide"):
        PatternConfig(pattern="5x1", include=LAYER_0).hooks().start_stage(tiny, None, 0, 4)


def test_pattern_settings_and_recovery_refused_word_for_word():
    from edgeqa.compress.prune_inc import check_pattern

    PatternConfig(criterion="snip_momentum")
    with pytest.raises(EdgeQAError) as e:
        PatternConfig(criterion="gradient")
    assert str(e.value) == "criterion must be 'magnitude' or 'snip_momentum', got 'gradient'"
    two = DistillConfig.from_dict({"train": {"data": "t"}, "stages": [{"loss": {"soft": 1.0}}] * 2})
    with pytest.raises(EdgeQAError) as e:
        PatternConfig().check_recovery(two)
    assert str(e.value) == "neural-compressor pruning runs over one training stage; give exactly one"
    odd = {"odd": torch.nn.Linear(4, 3)}  # 3 rows: N:M runs along the input, one row at a time
    check_pattern(odd, "2:4")
    check_pattern(odd, "1:4")  # N = 1 is a pattern too
    with pytest.raises(EdgeQAError, match=r"^pattern 4:4: N:M needs 0 < N < M$"):
        check_pattern(odd, "4:4")
