"""The refit of what magnitude masks keep, piece by piece: statistics summed over batches, the errors it reports
worked out by hand, its progress bar and log, blocks called with keywords, and OBS's mask against SparseGPT's
definition (the whole refit against the normal equations is in test_prune.py)."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import pytest
import torch
from torch.nn.utils import prune as torch_prune

from edgeqa.bench.files import EdgeQAError
from edgeqa.compress import prune_refit
from edgeqa.compress.prune_magnitude import apply_magnitude_masks, prunable_linears
from edgeqa.compress.prune_refit import _groups_by_input, _obs_mask, _refit_rows, real_tokens, refit_kept_weights

QUERY, KEY = "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key"


def _batch(model, n: int, length: int, seed: int, pad_from: int | None = None) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, model.config.vocab_size, (n, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    if pad_from is not None:
        mask[0, pad_from:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_statistics_are_summed_over_every_batch(tiny):
    """Two batches refit exactly as their concatenation: every batch's tokens count, once."""
    one, two = _batch(tiny, 2, 16, 1, pad_from=11), _batch(tiny, 3, 16, 2)
    whole = {k: torch.cat([one[k], two[k]]) for k in one}
    split = copy.deepcopy(tiny)
    results = {}
    for model, batches in ((tiny, [whole]), (split, [one, two])):
        layers = prunable_linears(model)
        apply_magnitude_masks(layers, 0.5)
        results[len(batches)] = refit_kept_weights(model, layers, batches, target="model")
    assert results[2]["windows"] == 5 and results[1]["output_error_after"] > 0
    for key in ("output_error_before", "output_error_after"):
        assert results[1][key] == pytest.approx(results[2][key], rel=1e-4)
    for name, m in prunable_linears(split).items():
        torch.testing.assert_close(m.weight_orig, dict(tiny.named_modules())[name].weight_orig, rtol=1e-3, atol=5e-5)


def test_the_reported_errors_are_the_pruned_matrices_mean_relative_output_error(tiny, caplog):
    """||X w' - X w||^2 / ||X w||^2 over every row of a matrix, before (w' = the masked row) and after the refit,
    averaged over the matrices refitted: here layer 0's query and key, which read the embeddings' output."""
    batch = _batch(tiny, 4, 16, 3, pad_from=9)
    with torch.no_grad():
        x = tiny.bert.embeddings(batch["input_ids"], batch["token_type_ids"])[batch["attention_mask"].bool()].double()
    modules = dict(tiny.named_modules())
    layers = {name: modules[name] for name in (QUERY, KEY)}
    dense = {name: m.weight.detach().double().clone() for name, m in layers.items()}
    apply_magnitude_masks(layers, 0.5)

    def error(name: str, w: torch.Tensor) -> float:
        return float((x @ (w - dense[name]).T).pow(2).sum() / (x @ dense[name].T).pow(2).sum())

    before = {name: error(name, dense[name] * m.weight_mask.double()) for name, m in layers.items()}
    caplog.set_level(logging.DEBUG, logger=prune_refit.__name__)
    summary = refit_kept_weights(tiny, layers, [batch], target="matrix")
    after = {name: error(name, m.weight.detach().double()) for name, m in layers.items()}
    mean_before, mean_after = sum(before.values()) / 2, sum(after.values()) / 2
    assert summary == {
        "matrices": 2,
        "windows": 4,
        "target": "matrix",
        "output_error_before": pytest.approx(mean_before, abs=2e-5),
        "output_error_after": pytest.approx(mean_after, abs=2e-5),
    }
    assert 0.01 < mean_after < mean_before < 1  # a real gain, measured apart from the code
    assert summary["output_error_before"] == round(summary["output_error_before"], 5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1] == (
        f"refit 2 matrices on 4 windows: relative output error {summary['output_error_before']:.4f} -> "
        f"{summary['output_error_after']:.4f} (mean)"
    )
    assert lines[:2] == [
        f"refit {name}: relative output error {before[name]:.4f} -> {after[name]:.4f}" for name in (QUERY, KEY)
    ]


def test_nothing_pruned_is_nothing_to_refit(tiny):
    assert refit_kept_weights(tiny, prunable_linears(tiny), [_batch(tiny, 2, 8, 4)], target="model") == {
        "matrices": 0, "windows": 2, "target": "model", "output_error_before": 0.0, "output_error_after": 0.0,
    }  # fmt: skip


def test_an_unknown_target_is_refused_by_name(tiny):
    with pytest.raises(EdgeQAError) as e:
        refit_kept_weights(tiny, prunable_linears(tiny), [], target="layer")
    assert str(e.value) == "refit target must be one of model, matrix, got 'layer'"


@pytest.mark.parametrize("terminal", [True, False])
def test_the_refit_shows_its_blocks_on_a_progress_bar(tiny, monkeypatch, terminal):
    """Block by block, refreshed often on a terminal and once a minute in a log file."""
    bars = []
    monkeypatch.setattr(prune_refit, "tqdm", lambda blocks, **kw: bars.append((list(blocks), kw)) or bars[-1][0])
    monkeypatch.setattr(prune_refit, "sys", SimpleNamespace(stderr=SimpleNamespace(isatty=lambda: terminal)))
    layers = prunable_linears(tiny)
    apply_magnitude_masks(layers, 0.5)
    refit_kept_weights(tiny, layers, [_batch(tiny, 2, 8, 5)], target="model")
    assert bars == [
        (
            ["bert.encoder.layer.0", "bert.encoder.layer.1"],
            {"desc": "refit", "unit": "block", "mininterval": 0.1 if terminal else 60},
        )
    ]


class _Block(torch.nn.Module):
    """A block called with keywords only and returning a bare tensor, as newer model code calls its layers."""

    def __init__(self, width: int):
        super().__init__()
        self.up, self.down = torch.nn.Linear(width, 2 * width), torch.nn.Linear(2 * width, width)

    def forward(self, *, hidden, scale):
        return hidden + self.down(torch.relu(self.up(hidden))) * scale[..., None]


class _Toy(torch.nn.Module):
    def __init__(self, width: int = 12):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(40, width)
        self.encoder = torch.nn.Module()
        self.encoder.layer = torch.nn.ModuleList([_Block(width), _Block(width)])

    def forward(self, input_ids, attention_mask):
        hidden = self.embed(input_ids)
        for block in self.encoder.layer:
            hidden = block(hidden=hidden, scale=attention_mask.float())
        return hidden


def test_blocks_called_with_keywords_are_refitted_on_their_own_inputs():
    """Layer 1's first matrix reads layer 0's output, masked tokens included in the computation but left out of the
    statistics; refitted to the dense model, its kept weights solve (H + d I)_SS w'_S = (X^T D w / n + d w)_S."""
    model, ids = _Toy(), torch.randint(0, 40, (3, 10), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    dense = copy.deepcopy(model)
    layers = prunable_linears(model)
    apply_magnitude_masks(layers, 0.5)
    summary = refit_kept_weights(model, layers, [{"input_ids": ids, "attention_mask": mask}], target="model")
    assert summary["matrices"] == 4 and summary["output_error_after"] < summary["output_error_before"]

    def layer_1_input(m):
        with torch.no_grad():
            hidden = m.encoder.layer[0](hidden=m.embed(ids), scale=mask.float())
        return hidden[mask.bool()].double()

    x, d = layer_1_input(model), layer_1_input(dense)
    h = x.T @ x / len(x)
    damping = 0.01 * h.diagonal().mean()
    h += damping * torch.eye(len(h), dtype=h.dtype)
    w = dense.encoder.layer[1].up.weight.detach().double()
    up = model.encoder.layer[1].up
    new, keep = up.weight.detach().double(), up.weight_mask.bool()
    for r in range(len(new)):
        s = keep[r]
        rhs = x.T @ (d @ w[r]) / len(x) + damping * w[r]
        torch.testing.assert_close(h[s][:, s] @ new[r, s], rhs[s], rtol=1e-4, atol=1e-6)


def test_matrices_reading_one_tensor_are_grouped(tiny):
    """Query, key and value read the same hidden states: their statistics are gathered once."""
    layer = tiny.bert.encoder.layer[0]
    names = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense"]  # fmt: skip
    modules = dict(layer.named_modules())
    call = ((torch.randn(2, 5, 32),), {})
    assert _groups_by_input(layer, names, modules, call) == [names[:3], [names[3]], [names[4]], [names[5]]]


def test_real_tokens_keeps_unpadded_rows_of_a_batch_and_flattens_anything_else():
    x, mask = torch.arange(24.0).reshape(2, 3, 4), torch.tensor([[True, False, True], [False, False, True]])
    assert torch.equal(real_tokens(x, mask), x[torch.tensor([0, 0, 1]), torch.tensor([0, 2, 2])])
    flat = torch.arange(6.0).reshape(2, 3)  # already one row per token: (2, 3), however it compares to the mask
    assert torch.equal(real_tokens(flat, torch.ones(2, 3, dtype=torch.bool)), flat)
    other = torch.arange(24.0).reshape(4, 3, 2)  # 3-D but not (batch, length) of this mask
    assert torch.equal(real_tokens(other, mask), other.reshape(12, 2))
    assert torch.equal(prune_refit._first(flat), flat) and torch.equal(prune_refit._first((flat, x)), flat)


def _sparsegpt_mask(mask, gone, h, rhs, block=prune_refit.OBS_BLOCK):
    """SparseGPT's mask choice written from its definitions: start from w* = H^-1 rhs; for each block of columns,
    a weight's saliency is w_j^2 / [(H_FF)^-1]_jj, F the columns from j on, the smallest go (pruned-before weights
    first); then, column by column, each column is fixed (0 where dropped) and the columns after it refitted to the
    best given the fixed ones: w_R -= (H_RR)^-1 H_Rj (fixed_j - w_j)."""
    w = torch.linalg.solve(h, rhs.T).T.clone()
    n, keep = h.shape[0], torch.ones_like(mask)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        diag = torch.stack([torch.linalg.inv(h[j:, j:])[0, 0] for j in range(lo, hi)])
        score = w[:, lo:hi].pow(2) / diag
        score[gone[:, lo:hi]] = -float("inf")
        kept = torch.ones_like(mask[:, lo:hi])
        kept.view(-1)[score.flatten().argsort()[: int((~mask[:, lo:hi]).sum())]] = False
        keep[:, lo:hi] = kept
        for j in range(lo, hi):
            change = w[:, j] * kept[:, j - lo] - w[:, j]
            w[:, j] += change
            if j + 1 < n:
                w[:, j + 1 :] -= change[:, None] * torch.linalg.solve(h[j + 1 :, j + 1 :], h[j + 1 :, j])[None, :]
    return keep


def test_obs_chooses_the_mask_sparsegpt_defines_block_by_block():
    """Two column blocks of 128, coupled through H, so the second block's choice rests on the first's updates."""
    gen = torch.Generator().manual_seed(7)
    inputs, rows = 2 * prune_refit.OBS_BLOCK, 3
    x = torch.randn(400, inputs, generator=gen, dtype=torch.float64) @ (
        torch.eye(inputs, dtype=torch.float64) + 0.3 * torch.randn(inputs, inputs, generator=gen, dtype=torch.float64)
    )
    h = x.T @ x / len(x) + 0.01 * torch.eye(inputs, dtype=torch.float64)
    rhs = torch.randn(rows, inputs, generator=gen, dtype=torch.float64)
    mask = torch.rand(rows, inputs, generator=gen) > 0.4
    gone = torch.zeros_like(mask)
    gone[0, :5] = gone[2, 200:203] = True
    mask[gone] = False
    chosen = _obs_mask(mask, gone, h, rhs)
    assert torch.equal(chosen, _sparsegpt_mask(mask, gone, h, rhs))
    assert not chosen[gone].any() and int(chosen[:, 128:].sum()) == int(mask[:, 128:].sum())


def test_weights_pruned_before_stay_pruned_when_obs_chooses():
    """A zero weight whose input the best fit would lean on most is still dropped first: it was pruned before."""
    m = torch.nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]] * 2))
    torch_prune.custom_from_mask(m, "weight", m.weight != 0)  # magnitude dropped the zero: quota 1 per row
    h = torch.eye(8, dtype=torch.float64)
    cross = torch.eye(8, dtype=torch.float64)
    cross[0, 1] = 5.0  # the dense model's column 0 output carries 5x the input of column 1: w*_0 is large
    with torch.no_grad():
        _refit_rows(m, h, cross, h, choose=True)
    assert not m.weight_mask[:, 0].any() and int(m.weight_mask.sum()) == 14


def test_later_blocks_are_called_with_the_attention_mask(tiny):
    """Layer 1's attention output matrix reads what attention made of the real tokens only: its statistics come
    from layer 1 called, after the refitted layer 0, with the batch's mask, as the model calls it."""
    batch = _batch(tiny, 3, 12, 8, pad_from=5)
    modules = dict(tiny.named_modules())
    name = "bert.encoder.layer.1.attention.output.dense"
    layers = {n: modules[n] for n in (QUERY, name)}
    w = layers[name].weight.detach().double().clone()
    apply_magnitude_masks(layers, 0.5)
    refit_kept_weights(tiny, layers, [batch], target="matrix")
    seen = []
    handle = layers[name].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        tiny(**batch)
    handle.remove()
    x = seen[0][batch["attention_mask"].bool()].double()
    h = x.T @ x / len(x)
    h += 0.01 * h.diagonal().mean() * torch.eye(len(h), dtype=h.dtype)
    new, keep = layers[name].weight.detach().double(), layers[name].weight_mask.bool()
    for r in range(len(new)):
        s = keep[r]
        torch.testing.assert_close(h[s][:, s] @ new[r, s], (h @ w[r])[s], rtol=1e-4, atol=1e-6)
