"""Pruning: magnitude sparsity (masks during training, ordinary weights when saved) and structured pruning of
attention heads and feed-forward neurons that physically shrinks the matrices.

- Unstructured: the encoder's nn.Linear weights (QA head and embeddings excluded unless `include` says
  otherwise) lose their smallest-magnitude weights, with one threshold over all of them (`scope: global`) or one
  per matrix (`scope: layer`); at once, or along Zhu and Gupta's cubic schedule during recovery training
  (s_t = s_f + (s_i - s_f)(1 - t/T)^3, from s_i = `initial`). Masks live in `torch.nn.utils.prune`
  re-parametrisations while training and are baked into the weights before saving, so a pruned folder holds
  plain tensors that load anywhere.
- Choice inside each matrix (`select: input`): each matrix keeps the share of zeros that magnitude gives it, but
  which weights go is ranked by |w_ij| x RMS(x_j), the weight times the root-mean-square of its input over
  calibration windows (Wanda's score, Sun et al. 2023). Ranked across matrices that score empties the FFN output
  matrices; used only inside each matrix it scores 5 to 6 F1 more than magnitude after 80% at once and a short
  recovery on the shared teacher, and 1.45 more after a staged (cubic, refitted) recovery to 80%.
- Choice inside the refit (`select: obs`, with `refit: true`): each matrix keeps magnitude's share of zeros, and
  which weights go is chosen from the refit's own input statistics by Optimal Brain Surgeon's saliency, column
  block by column block with each removal's error moved onto the columns still to come (SparseGPT's adaptive mask
  selection, Frantar and Alistarh 2023); the kept weights are then solved exactly. No measuring pass of its own.
  At 80% at once on the shared teacher it scores 12.7 F1 more than `input` after the refit; on a staged schedule,
  whose growths are small, it scores no more.
- Refit (`refit: true`): the weights a magnitude mask keeps are solved by least squares so each pruned matrix
  reproduces what the unpruned model computed there on calibration windows; the mask stays as chosen before.
- Structured: heads ranked by the L2 norm of their query/key/value/output slices (or, `importance: gradient`,
  by the loss's sensitivity to a mask on each head, Michel et al. 2019) are removed with transformers'
  `prune_heads`, which records them in `config.pruned_heads`; feed-forward neurons ranked by the norm of their
  input row and output column are removed in equal numbers from every layer, so `config.intermediate_size` still
  describes the model and the folder loads with plain transformers.

Dense ONNX Runtime kernels do not skip zeros: unstructured sparsity shrinks compressed files, not latency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from edgeqa.bench.files import EdgeQAError, known_fields

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

log = logging.getLogger(__name__)

METHODS = ("magnitude", "structured")
STRUCTURED_TYPES = ("bert",)  # encoder layout: layer.N.attention.self.{query,key,value}, intermediate, output
DEFAULT_INCLUDE = ("*encoder.layer.*",)  # every nn.Linear inside the encoder: QA head and embeddings stay dense
SELECTIONS = ("magnitude", "input", "obs")  # which weights go inside a matrix: see apply_magnitude_masks, _obs_mask
OBS_BLOCK = 128  # select: obs chooses the mask this many input columns at a time (SparseGPT's block)
REFIT_TARGETS = ("model", "matrix")  # what a refitted matrix reproduces: see refit_kept_weights
REFIT_MIN_RISE = 0.005  # cubic: a mask update that adds fewer zeros than this (0.5 points) is not worth a refit
REFIT_DAMPING = 0.01  # share of the input Gram matrix's mean diagonal added to it: stable solves for dead inputs


@dataclass(frozen=True)
class PruneConfig:
    method: str = "magnitude"
    sparsity: float = 0.5  # magnitude: share of the selected weights set to zero at the end
    scope: str = "global"  # magnitude: "global" (one threshold) or "layer" (per matrix)
    schedule: str = "oneshot"  # magnitude: "oneshot" or "cubic" (during recovery)
    ramp: float = 0.7  # cubic: share of the recovery steps over which sparsity rises to its target
    initial: float = 0.0  # cubic: sparsity applied at once before the first step (Zhu and Gupta's s_i)
    update_every: int = 50  # cubic: steps between mask updates
    include: tuple[str, ...] = DEFAULT_INCLUDE  # module-name globs of the nn.Linear layers to prune
    exclude: tuple[str, ...] = ()
    heads: float = 0.0  # structured: share of all attention heads to remove
    ffn: float = 0.0  # structured: share of each layer's feed-forward neurons to remove
    importance: str = "magnitude"  # structured: "magnitude" or "gradient"
    importance_batches: int = 32  # gradient importance: batches of 16 training windows to measure it on
    backend: str = "torch"  # magnitude: "torch" (element-wise) or "neural-compressor" (patterns, during training)
    pattern: str = "1x1"  # neural-compressor: "NxM" blocks (4x1: 4 output rows) or "N:M" (2:4 along the input)
    criterion: str = "magnitude"  # neural-compressor: "magnitude" or "snip_momentum" (|weight x gradient|)
    select: str = "magnitude"  # magnitude: which weights go inside each matrix: "magnitude", "input" or "obs"
    refit: bool = False  # magnitude: least-squares refit of the kept weights whenever the sparsity rises
    refit_batches: int = 32  # refit and select: input: batches of 16 training windows to fit or measure on
    refit_to: str = "model"  # refit: match the dense "model" on its own inputs, or each dense "matrix" on today's

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.method not in METHODS:
            raise EdgeQAError(f"prune method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("sparsity", "heads", "ffn", "initial"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value < 1:
                raise EdgeQAError(f"{name} must be in [0, 1), got {value!r}")
        if self.scope not in ("global", "layer"):
            raise EdgeQAError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        if self.schedule not in ("oneshot", "cubic"):
            raise EdgeQAError(f"schedule must be 'oneshot' or 'cubic', got {self.schedule!r}")
        if not 0 < self.ramp <= 1 or self.update_every < 1 or self.importance_batches < 1:
            raise EdgeQAError("ramp must be in (0, 1], update_every and importance_batches positive")
        if self.importance not in ("magnitude", "gradient"):
            raise EdgeQAError(f"importance must be 'magnitude' or 'gradient', got {self.importance!r}")
        if self.method == "structured" and not (self.heads or self.ffn):
            raise EdgeQAError("structured pruning needs heads > 0 or ffn > 0")
        if self.backend not in ("torch", "neural-compressor"):
            raise EdgeQAError(f"backend must be 'torch' or 'neural-compressor', got {self.backend!r}")
        if not re.fullmatch(r"\d+x\d+|\d+:\d+", str(self.pattern)):
            raise EdgeQAError(f"pattern must look like 4x1 (blocks) or 2:4 (N of every M), got {self.pattern!r}")
        if self.backend == "torch" and self.pattern != "1x1":
            raise EdgeQAError(f"pattern {self.pattern} needs backend: neural-compressor (torch prunes element-wise)")
        if self.backend == "neural-compressor" and self.method != "magnitude":
            raise EdgeQAError("the neural-compressor backend does pattern (magnitude-family) pruning only")
        if self.criterion not in ("magnitude", "snip_momentum"):
            raise EdgeQAError(f"criterion must be 'magnitude' or 'snip_momentum', got {self.criterion!r}")
        if self.initial and (self.schedule != "cubic" or self.initial > self.sparsity):
            raise EdgeQAError(f"initial sparsity {self.initial} needs schedule: cubic and at most sparsity")
        if self.refit and not (self.method == "magnitude" and self.backend == "torch"):
            raise EdgeQAError("refit fits the weights that magnitude pruning kept (method: magnitude, backend: torch)")
        if self.select not in SELECTIONS:
            raise EdgeQAError(f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        if self.select != "magnitude" and not (self.method == "magnitude" and self.backend == "torch"):
            raise EdgeQAError(
                f"select: {self.select} ranks what magnitude pruning removes (method: magnitude, backend: torch)"
            )
        if self.select == "obs" and not self.refit:
            raise EdgeQAError("select: obs chooses the mask inside the refit, from its statistics: set refit: true")
        if self.refit_to not in REFIT_TARGETS:
            raise EdgeQAError(f"refit_to must be one of {', '.join(REFIT_TARGETS)}, got {self.refit_to!r}")
        if self.refit_batches < 1:
            raise EdgeQAError(f"refit_batches must be positive, got {self.refit_batches!r}")

    @property
    def ranks_by_gradient(self) -> bool:
        """Structured pruning that measures the loss on training data to rank heads and neurons."""
        return self.method == "structured" and self.importance == "gradient"

    @property
    def needs_data(self) -> bool:
        """Whether pruning itself (before any recovery) reads training windows."""
        return self.ranks_by_gradient or self.refit or self.select == "input"

    @property
    def data_windows(self) -> int:
        """How many training windows pruning itself reads (batches of 16)."""
        return 16 * max(
            self.importance_batches if self.ranks_by_gradient else 0,
            self.refit_batches if self.refit or self.select == "input" else 0,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        if self.select == "magnitude":  # added later: steps made before it keep their identity
            del d["select"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneConfig:
        return cls(**known_fields(cls, d, "prune"))


# --- unstructured magnitude pruning --------------------------------------------------------------------------------


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
            x = _real_tokens(args[0], count["mask"]).detach()
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
    in X (the asymmetric calibration of GPTAQ, Li et al. 2025); on the shared teacher at 50% it scores 2.1 F1 more.
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
            x, d = (_real_tokens(t, mask).float() for t in (seen[0], seen[-1]))
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


def _real_tokens(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask] if x.dim() == 3 and x.shape[:2] == mask.shape else x.reshape(-1, x.shape[-1])


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


def check_pattern(layers: dict, pattern: str) -> None:
    """Refuse a block or N:M pattern that does not tile a weight matrix (out x in), naming the first such one."""
    if re.fullmatch(r"\d+x\d+", pattern):
        rows, cols = (int(x) for x in pattern.split("x"))
    else:
        n, m = (int(x) for x in pattern.split(":"))
        if not 0 < n < m:
            raise EdgeQAError(f"pattern {pattern}: N:M needs 0 < N < M")
        rows, cols = 1, m
    for name, m in layers.items():
        out_features, in_features = m.weight.shape
        if out_features % rows or in_features % cols:
            raise EdgeQAError(
                f"pattern {pattern} does not divide {name}'s weight shape ({out_features} x {in_features})"
            )


# --- structured pruning --------------------------------------------------------------------------------------------


def check_structured(model) -> None:
    if model.config.model_type not in STRUCTURED_TYPES:
        raise EdgeQAError(
            f"structured pruning knows {', '.join(STRUCTURED_TYPES)} models; this one is {model.config.model_type!r}"
        )


def head_scores_by_magnitude(model) -> torch.Tensor:
    """(layers, heads) L2 norm of each head's query, key and value rows and output-projection columns."""
    import torch

    check_structured(model)
    rows = []
    for layer in model.base_model.encoder.layer:
        attn = layer.attention
        n, d = attn.self.num_attention_heads, attn.self.attention_head_size
        q, k, v = (getattr(attn.self, x).weight.detach().view(n, d, -1) for x in ("query", "key", "value"))
        o = attn.output.dense.weight.detach().view(-1, n, d).transpose(0, 1)
        rows.append(torch.sqrt((q**2).sum((1, 2)) + (k**2).sum((1, 2)) + (v**2).sum((1, 2)) + (o**2).sum((1, 2))))
    return torch.stack(rows)


def ffn_scores_by_magnitude(model) -> torch.Tensor:
    """(layers, neurons) L2 norm of each feed-forward neuron's input row and output column."""
    import torch

    check_structured(model)
    return torch.stack(
        [
            torch.sqrt(
                (layer.intermediate.dense.weight.detach() ** 2).sum(1)
                + (layer.output.dense.weight.detach() ** 2).sum(0)
            )
            for layer in model.base_model.encoder.layer
        ]
    )


def heads_to_remove(scores: torch.Tensor, share: float) -> dict[int, list[int]]:
    """The lowest-scoring `share` of all heads, ranked globally; refuses to empty a layer."""
    import torch

    n_layers, n_heads = scores.shape
    k = int(round(share * n_layers * n_heads))
    if k == 0:
        return {}
    order = torch.argsort(scores.flatten())[:k].tolist()
    plan: dict[int, list[int]] = {}
    for flat in order:
        plan.setdefault(flat // n_heads, []).append(flat % n_heads)
    for layer, heads in plan.items():
        if len(heads) >= n_heads:
            raise EdgeQAError(
                f"pruning {share:.0%} of the heads would remove every head of layer {layer}; lower `heads`"
            )
    return {layer: sorted(h) for layer, h in sorted(plan.items())}


def prune_heads_(model, plan: dict[int, list[int]]) -> None:
    """Remove heads physically (transformers' prune_heads; recorded in config.pruned_heads)."""
    check_structured(model)
    for layer, heads in plan.items():
        have = model.base_model.encoder.layer[layer].attention.self.num_attention_heads
        if len(heads) >= have:
            raise EdgeQAError(f"cannot remove all {have} heads of layer {layer}")
    model.prune_heads(plan)


def prune_ffn_(model, share: float, scores: torch.Tensor | None = None) -> int:
    """Remove the same number of lowest-scoring feed-forward neurons from every layer; returns the new width."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    check_structured(model)
    scores = ffn_scores_by_magnitude(model) if scores is None else scores
    width = scores.shape[1]
    keep = width - int(round(share * width))
    if keep < 1:
        raise EdgeQAError(f"pruning {share:.0%} of {width} feed-forward neurons leaves none")
    for layer, s in zip(model.base_model.encoder.layer, scores, strict=True):
        index = torch.sort(torch.argsort(s, descending=True)[:keep]).values
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)
    model.config.intermediate_size = keep
    return keep


def gradient_scores(model, batches, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Head and neuron importance as |d loss / d mask|, summed over batches (masks of ones on heads and neurons).

    Heads: a multiplicative gate on each head's context vector, through a hook on the attention output projection's
    input; neurons: a gate on the intermediate activations. `loss_fn(model, batch)` returns a scalar loss. The
    absolute value is taken per batch, as Michel et al. take it per example: summed first, gradients of opposite
    sign cancel and useful heads look idle (recipes/prune-importance-cpu.yaml measures the ranking's effect).
    """
    import torch

    check_structured(model)
    layers = model.base_model.encoder.layer
    head_gates = [torch.ones(lay.attention.self.num_attention_heads, requires_grad=True) for lay in layers]
    ffn_gates = [torch.ones(lay.intermediate.dense.out_features, requires_grad=True) for lay in layers]
    handles = []
    for layer, hg, fg in zip(layers, head_gates, ffn_gates, strict=True):
        d = layer.attention.self.attention_head_size

        def gate_heads(_m, args, hg=hg, d=d):
            x = args[0]
            return (x.view(*x.shape[:-1], -1, d) * hg[:, None]).view_as(x)

        handles.append(layer.attention.output.dense.register_forward_pre_hook(gate_heads))
        handles.append(layer.intermediate.register_forward_hook(lambda _m, _i, out, fg=fg: out * fg))
    heads = torch.zeros(len(layers), len(head_gates[0]))
    ffn = torch.zeros(len(layers), len(ffn_gates[0]))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            loss_fn(model, batch).backward()
            for i, (hg, fg) in enumerate(zip(head_gates, ffn_gates, strict=True)):
                heads[i] += hg.grad.abs()
                ffn[i] += fg.grad.abs()
                hg.grad, fg.grad = None, None
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return heads, ffn


# --- riding the training loop --------------------------------------------------------------------------------------


def prune_now(model, cfg: PruneConfig, trainset=None, gradual: bool = False) -> dict[str, Any]:
    """Apply `cfg` to `model` in place; with `gradual`, as it stands before recovery (a cubic schedule starts at 0)."""
    if cfg.method == "structured":
        if cfg.ranks_by_gradient:
            if trainset is None:
                raise EdgeQAError("gradient importance needs training data to measure the loss on")
            head_scores, ffn_scores = gradient_scores(
                model, _label_batches(trainset, cfg.importance_batches), _span_loss
            )
        else:
            head_scores, ffn_scores = head_scores_by_magnitude(model), ffn_scores_by_magnitude(model)
        if cfg.heads and model.config.pruned_heads:
            raise EdgeQAError("this model already lost heads to pruning; prune its heads once, from the unpruned model")
        plan = heads_to_remove(head_scores, cfg.heads) if cfg.heads else {}
        prune_heads_(model, plan)
        width = prune_ffn_(model, cfg.ffn, ffn_scores) if cfg.ffn else model.config.intermediate_size
        return {"heads_removed": {str(k): v for k, v in plan.items()}, "intermediate_size": width}
    layers = prunable_linears(model, cfg.include, cfg.exclude)
    first = cfg.initial if gradual and cfg.schedule == "cubic" else cfg.sparsity
    if cfg.select == "input" and trainset is None:
        raise EdgeQAError("select: input measures the layers' inputs on training windows; give training data")
    rms = _measured_rms(model, layers, trainset, cfg, seed=0) if cfg.select == "input" and first > 0 else None
    apply_magnitude_masks(layers, first, cfg.scope, rms)
    summary: dict[str, Any] = {"matrices": len(layers)}
    if cfg.refit and first > 0:
        if trainset is None:
            raise EdgeQAError("refit fits the kept weights on training windows; give training data")
        batches = _label_batches(trainset, cfg.refit_batches)
        inputs = [_inputs(b) for b in batches]
        summary["refit"] = refit_kept_weights(model, layers, inputs, cfg.refit_to, choose=cfg.select == "obs")
    return summary


def pruning_hooks(cfg: PruneConfig):
    """Hooks for `compress.train.distill`: prune before training, follow the schedule, save baked weights."""
    import copy

    import torch

    from edgeqa.compress.train import Hooks

    held: dict[str, Any] = {}

    def prepare(student, trainset) -> None:
        held["trainset"] = trainset
        prune_now(student, cfg, trainset, gradual=True)

    def after_step(student, stage: int, step: int, total: int) -> None:
        if cfg.method == "magnitude" and cfg.schedule == "cubic" and (step % cfg.update_every == 0 or step == total):
            layers = prunable_linears(student, cfg.include, cfg.exclude)
            target = cubic_sparsity(step, total, cfg.sparsity, cfg.ramp, cfg.initial)
            last = cubic_sparsity(step - cfg.update_every, total, cfg.sparsity, cfg.ramp, cfg.initial)
            refit = cfg.refit and target - last >= REFIT_MIN_RISE  # the mask grew: fit the survivors again
            if refit:
                for m in layers.values():  # weights pruned earlier become zeros: the refit's target is this model
                    with torch.no_grad():
                        m.weight_orig.mul_(m.weight_mask)
            rms = None
            if cfg.select == "input" and target > last:  # after the ramp the mask keeps every nonzero weight
                rms = _measured_rms(student, layers, held["trainset"], cfg, seed=step)
            apply_magnitude_masks(layers, target, cfg.scope, rms)
            if refit:
                batches = _label_batches(held["trainset"], cfg.refit_batches, seed=step)
                inputs = [_inputs(b) for b in batches]
                refit_kept_weights(student, layers, inputs, cfg.refit_to, choose=cfg.select == "obs")

    def to_save(student):
        baked = copy.deepcopy(student)
        bake_masks(baked)
        return baked

    if cfg.backend == "neural-compressor":
        return _inc_hooks(cfg, Hooks)
    return Hooks(
        prepare=prepare,
        after_step=after_step,
        to_save=to_save,
        may_keep=lambda stage, step, total: at_target(cfg, step, total),
        fingerprint={"prune": cfg.to_dict()},
    )


def at_target(cfg: PruneConfig, step: int, total: int) -> bool:
    """Whether the schedule has reached its final sparsity: before that, a model that scores better is only one
    with fewer zeros, never the pruned result."""
    if cfg.method != "magnitude" or cfg.schedule != "cubic":
        return True
    end = max(1, round(total * cfg.ramp))
    first_update_at_end = -(-end // cfg.update_every) * cfg.update_every  # masks change every update_every steps
    return step >= min(first_update_at_end, total)


INC_STATE = ("global_step", "masks", "current_sparsity_ratio", "init_sparsity_ratio", "completed_pruned_cnt")


def _inc_hooks(cfg: PruneConfig, Hooks):
    """Drive neural-compressor's pattern pruner from the loop's hooks (its own optimiser and model patching,
    including its replacement of torch.save, are not used). Its masks and counters go into the checkpoint."""
    held: dict[str, Any] = {}

    def start_stage(student, optimizer, stage: int, total: int) -> None:
        from neural_compressor import WeightPruningConfig
        from neural_compressor.compression.pruner.pruning import BasicPruning
        from neural_compressor.compression.pruner.utils import process_config

        layers = prunable_linears(student, cfg.include, cfg.exclude)
        check_pattern(layers, cfg.pattern)
        gradual = cfg.schedule == "cubic"
        config = WeightPruningConfig(
            pruning_configs=[{"op_names": [f"^{re.escape(n)}$" for n in layers]}],
            target_sparsity=cfg.sparsity,
            pattern=cfg.pattern,
            pruning_type=cfg.criterion,
            start_step=0,
            end_step=max(1, round(total * cfg.ramp)) if gradual else 0,
            pruning_frequency=cfg.update_every if gradual else 1,
            pruning_scope="global" if cfg.scope == "global" else "local",
            sparsity_decay_type="cube" if gradual else "exp",
        )
        held["pruning"] = BasicPruning(process_config(config), student)
        held["pruning"].on_train_begin()

    def state() -> list[dict]:
        return [{k: getattr(p, k) for k in INC_STATE if hasattr(p, k)} for p in held["pruning"].pruners]

    def load_state(saved: list[dict]) -> None:
        for pruner, values in zip(held["pruning"].pruners, saved, strict=True):
            for k, v in values.items():
                setattr(pruner, k, v)

    def after_step(student, stage: int, step: int, total: int) -> None:
        held["pruning"].on_after_optimizer_step()
        held["pruning"].on_step_end()

    return Hooks(
        start_stage=start_stage,
        before_step=lambda stage, step: held["pruning"].on_step_begin(step),
        before_optimizer=lambda: held["pruning"].on_before_optimizer_step(),
        after_step=after_step,
        may_keep=lambda stage, step, total: at_target(cfg, step, total),
        state=state,
        load_state=load_state,
        fingerprint={"prune": cfg.to_dict()},
    )


def _label_batches(trainset, n: int, size: int = 16, seed: int = 0):
    """n batches of labelled training windows drawn at random (seeded), as model inputs plus labels.

    A random draw, not the first windows: those would be the longest contexts only, a biased sample of the loss.
    """
    import numpy as np
    import torch

    from edgeqa.bench.qa import pad

    pick = np.random.default_rng(seed).choice(len(trainset), size=min(n * size, len(trainset)), replace=False)
    pick = pick[np.argsort(-trainset.lengths[pick], kind="stable")]  # similar lengths together: less padding
    names = ("input_ids", "attention_mask", "token_type_ids")
    for lo in range(0, len(pick), size):
        idx = pick[lo : lo + size]
        arrays = pad(trainset, idx, 0)
        batch = {k: torch.from_numpy(arrays[k]) for k in names if k in arrays}
        batch["labels"] = torch.from_numpy(trainset.labels[idx])
        yield batch


def _measured_rms(model, layers, trainset, cfg: PruneConfig, seed: int) -> dict:
    batches = [_inputs(b) for b in _label_batches(trainset, cfg.refit_batches, seed=seed)]
    return input_rms(model, layers, batches)


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _span_loss(model, batch) -> torch.Tensor:
    from edgeqa.compress.losses import span_ce

    inputs = _inputs(batch)
    out = model(**inputs)
    return span_ce(out.start_logits, out.end_logits, batch["labels"], inputs["attention_mask"].bool())
