"""What to prune and how: `PruneConfig`, one flat record for every method, as a recipe's `prune` section and a
pruned folder's prune.json hold it.

Fields belong to one method or backend each (the comments say which); `__post_init__` refuses combinations that
mean nothing, so a bad recipe fails before any work. `to_dict`/`from_dict` are the JSON form: a recorded
prune.json must keep loading, and a step made before a field existed must keep its identity.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from edgeqa.bench.files import EdgeQAError, known_fields

METHODS = ("magnitude", "structured")
DEFAULT_INCLUDE = ("*encoder.layer.*",)  # every nn.Linear inside the encoder: QA head and embeddings stay dense
SELECTIONS = ("magnitude", "input", "obs")  # which weights go inside a matrix: prune_magnitude, prune_refit
REFIT_TARGETS = ("model", "matrix")  # what a refitted matrix reproduces: see refit_kept_weights


@dataclass(frozen=True)
class PruneConfig:
    """One pruning step's settings (see the module docstring); frozen, so a step's record cannot drift."""

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


SELECTION_WORDS = {"input": "chosen by |w| x input RMS", "obs": "chosen by OBS saliency"}


def describe_pruning(p: dict[str, Any] | None) -> str:
    """What a prune.json record says was asked for, in one line (the report prints it; what the file holds is
    measured there). Records written before the description was kept are described here when read."""
    if not p:
        return ""
    cfg = p.get("settings") or {}
    if p.get("method") == "structured":
        parts = [f"heads per layer {p['heads_per_layer']}" if p.get("heads_per_layer") else f"heads {cfg.get('heads')}"]
        parts.append(f"FFN {p['intermediate_size']}" if p.get("intermediate_size") else f"FFN {cfg.get('ffn')}")
        return f"structured ({cfg.get('importance', 'magnitude')}): " + ", ".join(parts)
    pattern = cfg.get("pattern", "1x1")
    shape = "" if pattern == "1x1" else f" {pattern}"
    how = [cfg.get("scope"), cfg.get("schedule")]
    if cfg.get("initial"):
        how[-1] += f" from {cfg['initial']:.0%}"
    select = cfg.get("select", "magnitude")
    if select != "magnitude":
        how.append(SELECTION_WORDS.get(select, f"chosen by {select}"))
    if cfg.get("refit"):
        how.append(f"refit to {cfg.get('refit_to', 'matrix')}")  # records from before refit_to: per matrix
    return f"magnitude{shape} {cfg.get('sparsity', 0):.0%} ({', '.join(str(h) for h in how)})"
