"""Unstructured magnitude pruning: the encoder's nn.Linear weights (QA head and embeddings excluded unless
`include` says otherwise) lose their smallest-magnitude weights, with one threshold over all of them (`scope:
global`) or one per matrix (`scope: layer`); at once, or along Zhu and Gupta's cubic schedule during recovery
training (s_t = s_f + (s_i - s_f)(1 - t/T)^3, from s_i = `initial`).

Masks live in `torch.nn.utils.prune` re-parametrisations while training and are baked into the weights before
saving, so a pruned folder holds plain tensors that load anywhere. With `select: input` each matrix keeps the
share of zeros that magnitude gives it, but which weights go is ranked by |w_ij| x RMS(x_j), the weight times the
root-mean-square of its input over calibration windows (Wanda's score, Sun et al. 2023): used inside each matrix
only, because ranked across matrices that score empties the FFN output matrices.

Dense ONNX Runtime kernels do not skip zeros: unstructured sparsity shrinks compressed files, not latency.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.prune_config import DEFAULT_INCLUDE

if TYPE_CHECKING:
    import torch

    from edgeqa.compress.prune_config import PruneConfig


def prunable_linears(model, include=DEFAULT_INCLUDE, exclude=()) -> dict[str, torch.nn.Linear]:
    """The nn.Linear modules whose names match `include` and not `exclude`."""
    import torch

    found = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and any(fnmatch.fnmatchcase(name, p) for p in include)
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    }
    if not found:
        raise EdgeQAError(f"no nn.Linear layer matches include {list(include)} minus exclude {list(exclude)}")
    return found


def cubic_sparsity(step: int, total: int, final: float, ramp: float = 0.7, initial: float = 0.0) -> float:
    """Zhu and Gupta's schedule: from `initial` at step 0, fast early pruning, slow near the target, reached at
    `ramp` of the steps."""
    end = max(1, round(total * ramp))
    t = min(step, end) / end
    return final + (initial - final) * (1 - t) ** 3


def at_target(cfg: PruneConfig, step: int, total: int) -> bool:
    """Whether the schedule has reached its final sparsity: before that, a model that scores better is only one
    with fewer zeros, never the pruned result."""
    if cfg.method != "magnitude" or cfg.schedule != "cubic":
        return True
    end = max(1, round(total * cfg.ramp))
    first_update_at_end = -(-end // cfg.update_every) * cfg.update_every  # masks change every update_every steps
    return step >= min(first_update_at_end, total)


def apply_magnitude_masks(
    layers: dict[str, torch.nn.Linear],
    sparsity: float,
    scope: str = "global",
    input_rms: dict[str, torch.Tensor] | None = None,
) -> None:
    """(Re)compute masks so that `sparsity` of the weights are zero; weights pruned earlier stay pruned.

    Magnitude decides how many weights each matrix keeps; with `input_rms` (per input feature, see `input_rms`)
    the ones it keeps are those with the largest |w_ij| x rms_j inside the matrix instead of the largest |w_ij|.
    """
    import torch
    from torch.nn.utils import prune as torch_prune

    current = {name: _masked_weight(m).detach().abs() for name, m in layers.items()}
    if scope == "global":
        scores = torch.cat([w.flatten() for w in current.values()])
        k = int(sparsity * scores.numel())
        threshold = torch.kthvalue(scores.float(), k).values if k > 0 else scores.new_tensor(-1.0)
        masks = {name: (w > threshold).to(w.dtype) for name, w in current.items()}
    else:
        masks = {}
        for name, w in current.items():
            k = int(sparsity * w.numel())
            threshold = torch.kthvalue(w.flatten().float(), k).values if k > 0 else w.new_tensor(-1.0)
            masks[name] = (w > threshold).to(w.dtype)
    if input_rms is not None:
        for name, w in current.items():
            keep = int(masks[name].sum())  # at most the nonzeros
            score = (w * input_rms[name].to(w.dtype)[None, :]).flatten()
            score[w.flatten() == 0] = -1  # a weight pruned earlier is never picked, not even beside a dead input
            chosen = torch.zeros_like(score)
            chosen[score.topk(keep).indices] = 1
            masks[name] = chosen.view_as(w)
    for name, m in layers.items():
        if torch_prune.is_pruned(m):
            m.weight_mask.copy_(masks[name])
        else:
            torch_prune.custom_from_mask(m, "weight", masks[name])


def input_rms(model, layers: dict[str, torch.nn.Linear], batches) -> dict[str, torch.Tensor]:
    """Root-mean-square of each input feature of each layer over the real (unpadded) tokens of `batches`."""
    import torch

    sums = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in layers.items()}
    count = {"tokens": 0, "mask": None}

    def grab(name):
        def hook(_m, args):
            x = real_tokens(args[0], count["mask"]).detach()
            sums[name] += x.double().pow(2).sum(0).cpu()

        return hook

    handles = [m.register_forward_pre_hook(grab(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches:
                count["mask"] = batch["attention_mask"].bool().to(device)
                count["tokens"] += int(count["mask"].sum())
                model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: (s / max(1, count["tokens"])).sqrt().float().to(device) for name, s in sums.items()}


def real_tokens(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask] if x.dim() == 3 and x.shape[:2] == mask.shape else x.reshape(-1, x.shape[-1])


def _masked_weight(m: torch.nn.Linear) -> torch.Tensor:
    from torch.nn.utils import prune as torch_prune

    return m.weight_orig * m.weight_mask if torch_prune.is_pruned(m) else m.weight


def bake_masks(model) -> None:
    """Fold every pruning mask into its weight: the model holds ordinary (zero-filled) tensors again."""
    import torch
    from torch.nn.utils import prune as torch_prune

    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and torch_prune.is_pruned(m):
            torch_prune.remove(m, "weight")


def sparsity_report(model, include=DEFAULT_INCLUDE, exclude=()) -> dict[str, Any]:
    """Zeros per pruned matrix and overall, and parameter counts, measured on the weights themselves."""
    layers = prunable_linears(model, include, exclude)
    per_layer, zeros, total = {}, 0, 0
    for name, m in layers.items():
        w = _masked_weight(m)
        z, n = int((w == 0).sum()), w.numel()
        per_layer[name] = round(z / n, 4)
        zeros, total = zeros + z, total + n
    params = sum(p.numel() for p in model.parameters())
    return {
        "pruned_matrices_sparsity": round(zeros / total, 4),
        "model_sparsity": round(zeros / params, 4),
        "parameters": params,
        "nonzero_parameters": params - zeros,
        "per_layer": per_layer,
    }
