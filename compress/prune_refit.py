"""Refit: the weights a magnitude mask keeps are solved by least squares so that each pruned matrix reproduces
what the unpruned model computed there on calibration windows (`refit: true`); the mask stays as chosen before.

With `select: obs` the refit also chooses the mask: each matrix keeps magnitude's share of zeros, and which weights
go is chosen from the refit's own input statistics by Optimal Brain Surgeon's saliency, column block by column
block with each removal's error moved onto the columns still to come (SparseGPT's adaptive mask selection,
Frantar and Alistarh 2023); the kept weights are then solved exactly. It needs no measuring pass of its own.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.prune_config import REFIT_TARGETS

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

log = logging.getLogger(__name__)

OBS_BLOCK = 128  # select: obs chooses the mask this many input columns at a time (SparseGPT's block)
REFIT_DAMPING = 0.01  # share of the input Gram matrix's mean diagonal added to it: stable solves for dead inputs


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the inputs it wanted are captured."""


def refit_kept_weights(
    model, layers: dict[str, torch.nn.Linear], batches, target: str, choose: bool = False
) -> dict[str, Any]:
    """Refit the weights that pruning kept so each pruned matrix reproduces what it computed before pruning.

    Per output row w with kept inputs S this is least squares with a closed form. `target: matrix` matches the
    dense row on the inputs the pruned model now feeds it: min ||X w'_S - X w||^2, so w'_S = (H_SS)^-1 (H w)_S with
    H = X^T X, the Optimal Brain Surgeon update for a fixed mask (Hassibi and Stork 1993; SparseGPT, Frantar and
    Alistarh 2023). `target: model` matches the dense model's own output there, on the dense model's inputs D:
    min ||X w'_S - D w||^2, so w'_S = (H_SS)^-1 (X^T D w)_S, which also undoes the error earlier pruned layers left
    in X (the asymmetric calibration of GPTAQ, Li et al. 2025).
    The mask stays as it is, unless `choose`: then each matrix's share of zeros stays, but which weights keep it is
    chosen first, on the same statistics, by `_obs_mask`. Blocks (`...layer.N`) run in forward order on the
    outputs of the already refitted blocks before them. Padding tokens are left out. "Before pruning" is what the
    weights behind the masks (`weight_orig`) compute. Returns the relative output error of the pruned matrices,
    averaged, before and after the refit.
    """
    import torch
    from torch.nn.utils import prune as torch_prune

    if target not in REFIT_TARGETS:
        raise EdgeQAError(f"refit target must be one of {', '.join(REFIT_TARGETS)}, got {target!r}")
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    token_masks = [b["attention_mask"].bool() for b in batches]
    modules = dict(model.named_modules())
    blocks: dict[str, list[str]] = {}
    for name in layers:
        if torch_prune.is_pruned(modules[name]):
            blocks.setdefault(block_of(name), []).append(name)
    order = [name for name in modules if name in blocks]  # registration order: the forward order of layer.N
    was_training = model.training
    model.eval()
    errors: list[tuple[float, float]] = []
    try:
        with torch.no_grad():
            inputs = _capture_inputs(model, modules[order[0]], batches) if order else []
            dense_inputs = inputs if target == "model" else None
            quiet = not sys.stderr.isatty()
            for block_name in tqdm(order, desc="refit", unit="block", mininterval=60 if quiet else 0.1):
                block = modules[block_name]
                dense_block = _as_dense(block, block_name, blocks[block_name], modules)
                for group in _groups_by_input(block, blocks[block_name], modules, inputs[0]):
                    stats = _input_stats(block, dense_block, modules[group[0]], inputs, dense_inputs, token_masks)
                    for name in group:
                        before, after = _refit_rows(modules[name], *stats, choose=choose)
                        errors.append((before, after))
                        log.debug("refit %s: relative output error %.4f -> %.4f", name, before, after)
                if dense_inputs is not None:
                    dense_inputs = [_replace_hidden(a, k, _first(dense_block(*a, **k))) for a, k in dense_inputs]
                inputs = [_replace_hidden(a, k, _first(block(*a, **k))) for a, k in inputs]
    finally:
        model.train(was_training)
    mean = [round(sum(e[i] for e in errors) / max(1, len(errors)), 5) for i in (0, 1)]
    windows = sum(len(b["input_ids"]) for b in batches)
    log.info("refit %d matrices on %d windows: relative output error %.4f -> %.4f (mean)", len(errors), windows, *mean)
    return {
        "matrices": len(errors),
        "windows": windows,
        "target": target,
        "output_error_before": mean[0],
        "output_error_after": mean[1],
    }


def _as_dense(block, block_name: str, names: list[str], modules: dict) -> Callable:
    """The block as it computed before pruning: its masked matrices called with `weight_orig` unmasked, from a copy
    taken now, so refitting the block does not change what this returns."""
    import torch

    swapped = {}
    for name in names:
        m, rel = modules[name], name[len(block_name) + 1 :]
        swapped[f"{rel}.weight_orig"] = m.weight_orig.detach().clone()
        swapped[f"{rel}.weight_mask"] = torch.ones_like(m.weight_mask)
    return lambda *args, **kwargs: torch.func.functional_call(block, swapped, args, kwargs)


def real_tokens(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One row per real (unpadded) token of a layer's input: (batch, length, features) by the attention mask."""
    return x[mask] if x.dim() == 3 and x.shape[:2] == mask.shape else x.reshape(-1, x.shape[-1])


def block_of(name: str) -> str:
    """'bert.encoder.layer.3.attention.self.query' -> 'bert.encoder.layer.3': the numbered block a matrix is in."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    raise EdgeQAError(f"refit works block by block; {name} is not inside a numbered block (such as layer.3)")


def _first(out):
    return out[0] if isinstance(out, tuple | list) else out


def _replace_hidden(args: tuple, kwargs: dict, hidden) -> tuple[tuple, dict]:
    """A block's call with its hidden states (first positional argument, else first keyword) replaced."""
    if args:
        return (hidden, *args[1:]), kwargs
    key = next(iter(kwargs))
    return args, {**kwargs, key: hidden}


def _capture_inputs(model, block, batches) -> list[tuple[tuple, dict]]:
    """The arguments the first block is called with, per batch: everything the model computes before it."""

    captured = []

    def grab(_m, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(_Stop):
                model(**batch)
    finally:
        handle.remove()
    return captured


def _groups_by_input(block, names: list[str], modules: dict, call) -> list[list[str]]:
    """The block's pruned matrices in call order, grouped by shared input (query, key and value read one tensor)."""
    seen: list[tuple[str, int]] = []
    handles = [
        modules[n].register_forward_pre_hook(lambda _m, args, n=n: seen.append((n, args[0].data_ptr()))) for n in names
    ]
    try:
        block(*call[0], **call[1])
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    last = None
    for name, ptr in seen:
        if ptr == last:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = ptr
    return groups


def _input_stats(block, dense_block, linear, inputs, dense_inputs, token_masks):
    """Second moments over the real tokens reaching `linear`: H = X^T X, the cross term X^T D and D^T D, where
    X is what the pruned block feeds it and D what the dense block fed it (D = X when `dense_inputs` is None)."""
    import torch

    size = (linear.in_features, linear.in_features)
    h, cross, dd = (torch.zeros(size, dtype=torch.float64, device=token_masks[0].device) for _ in range(3))
    seen: list[torch.Tensor] = []

    def grab(_m, args):
        seen.append(args[0])
        raise _Stop  # the rest of the block is not needed: about half the refit's time saved

    handle = linear.register_forward_pre_hook(grab)
    n = 0
    try:
        for i, mask in enumerate(token_masks):
            seen.clear()
            with contextlib.suppress(_Stop):
                block(*inputs[i][0], **inputs[i][1])
            if dense_inputs is not None:
                with contextlib.suppress(_Stop):
                    dense_block(*dense_inputs[i][0], **dense_inputs[i][1])
            x, d = (real_tokens(t, mask).float() for t in (seen[0], seen[-1]))
            h += (x.T @ x).double()  # float32 products (fast), summed over batches in float64
            if dense_inputs is not None:
                cross += (x.T @ d).double()
                dd += (d.T @ d).double()
            n += len(x)
    finally:
        handle.remove()
    n = max(1, n)
    if dense_inputs is None:
        return h / n, h / n, h / n
    return h / n, cross / n, dd / n


def _refit_rows(
    m: torch.nn.Linear, h: torch.Tensor, cross: torch.Tensor, dd: torch.Tensor, choose: bool = False
) -> tuple[float, float]:
    """Solve each row's kept weights (see refit_kept_weights), after choosing them with `_obs_mask` if `choose`;
    returns the relative output error ||X w' - D w||^2 / ||D w||^2 summed over rows, before (w' = the masked dense
    row) and after."""
    import torch

    dense = m.weight_orig.detach().double()
    damping = REFIT_DAMPING * h.diagonal().mean()
    damped = h + damping * torch.eye(len(h), dtype=h.dtype, device=h.device)
    fitted = dense @ cross.T  # row r: (X^T D w_r)^T
    rhs = fitted + damping * dense  # the damping pulls towards the dense row, not towards zero
    if choose:
        m.weight_mask.copy_(_obs_mask(m.weight_mask.detach().bool(), dense == 0, damped, rhs))
    keep = m.weight_mask.detach().bool()
    new = torch.zeros_like(dense)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of small factorisations: threading them costs 10-20x on 2 cores
    try:
        for r in range(dense.shape[0]):
            s = keep[r].nonzero().squeeze(1)
            if len(s):
                chol = torch.linalg.cholesky(damped[s][:, s])
                new[r, s] = torch.cholesky_solve(rhs[r, s, None], chol)[:, 0]
    finally:
        torch.set_num_threads(threads)
    reference = ((dense @ dd) * dense).sum()

    def error(w: torch.Tensor) -> float:
        miss = ((w @ h) * w).sum() - 2 * (fitted * w).sum() + reference
        return float(miss.clamp_min(0) / reference.clamp_min(1e-30))

    before = error(dense * keep)
    m.weight_orig.copy_(torch.where(keep, new, dense).to(m.weight_orig.dtype))
    return before, error(new)


def _obs_mask(mask: torch.Tensor, gone: torch.Tensor, h: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Which weights a matrix keeps, chosen by Optimal Brain Surgeon's saliency as SparseGPT does (Frantar and
    Alistarh 2023), with as many zeros in every block of input columns as `mask` has there.

    Each row's error ||X w' - D w||^2 is (w' - w*)^T H (w' - w*) plus a constant, with w* = H^-1 rhs the row that
    fits best unpruned, so the weights go from w*. Column block by column block, the ones whose removal costs least
    go (w_ij^2 / [U]_jj^2, U the upper Cholesky factor of H^-1), weights in `gone` (pruned before) first; each
    removal's error moves onto the columns not yet decided, so later choices see the weights that will make up for
    the earlier ones. Magnitude or input-weighted choice rank each weight alone, blind to what the others can absorb.
    """
    import torch

    chol = torch.linalg.cholesky(h)
    w = torch.cholesky_solve(rhs.T, chol).T  # w*, one row per output
    u = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)
    keep = torch.ones_like(mask)
    for lo in range(0, w.shape[1], OBS_BLOCK):
        hi = min(lo + OBS_BLOCK, w.shape[1])
        block, ub = w[:, lo:hi].clone(), u[lo:hi, lo:hi]
        quota = int((~mask[:, lo:hi]).sum())  # at least the weights gone before: magnitude drops zeros first
        score = block.pow(2) / ub.diagonal().pow(2)[None, :]
        score[gone[:, lo:hi]] = -1.0
        kept = torch.ones_like(mask[:, lo:hi])
        if quota:
            kept.view(-1)[score.flatten().topk(quota, largest=False).indices] = False
        errors = torch.zeros_like(block)
        for i in range(hi - lo):
            e = block[:, i] * ~kept[:, i] / ub[i, i]
            block[:, i:] -= e[:, None] * ub[i, i:][None, :]
            errors[:, i] = e
        w[:, hi:] -= errors @ u[lo:hi, hi:]
        keep[:, lo:hi] = kept
    return keep
