"""Pruning methods: each one frozen config class, registered once with what it does (`apply` at once, `hooks`
through recovery training, `describe` for the record), and the one serialiser of a recipe's `prune` section.

    @register_pruning
    @dataclass(frozen=True, kw_only=True)
    class MagnitudeConfig(PruneConfig):
        method: ClassVar[str] = "magnitude"
        sparsity: float = 0.5
        def apply(self, model, trainset=None, gradual=False): ...

A method is one class in its own module (`prune_magnitude`, `prune_structured`, `prune_inc`), imported by
`compress/prune.py`; recipe keys, checks and records all come from the registry.

Records keep version 2's flat layout (every method's field, at its default where the method has none), so a step
made before the methods were split keeps its identity and its folder is reused; `prune_config_from_dict` reads
both that layout and a recipe's section (older records are upgraded by `bench.serial`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from edgeqa.bench.files import EdgeQAError, check_field_types
from edgeqa.bench.serial import config_from_dict, config_to_dict, upgrade_prune_settings

if TYPE_CHECKING:
    from edgeqa.compress.train_config import DistillConfig, Hooks

DEFAULT_INCLUDE = ("*encoder.layer.*",)  # every nn.Linear inside the encoder: QA head and embeddings stay dense
REFIT_TARGETS = ("model", "matrix")  # what a refitted matrix reproduces: see refit_kept_weights
PRUNING_METHODS: dict[str, type[PruneConfig]] = {}

# Version 2 records: one flat settings dict for every method, each field at this default where a method lacks it.
FLAT_V2 = {"method": "magnitude", "sparsity": 0.5, "scope": "global", "schedule": "oneshot", "ramp": 0.7,
           "initial": 0.0, "update_every": 50, "include": list(DEFAULT_INCLUDE), "exclude": [], "heads": 0.0,
           "ffn": 0.0, "importance": "magnitude", "importance_batches": 32, "backend": "torch", "pattern": "1x1",
           "criterion": "magnitude", "refit": False, "refit_batches": 32, "refit_to": "model"}  # fmt: skip
# Methods as version 2 spelled them: the pattern method was magnitude pruning with another backend.
FLAT_V2_SPELLING = {"pattern": {"method": "magnitude", "backend": "neural-compressor"}}


def register_pruning(cls: type[PruneConfig]) -> type[PruneConfig]:
    if cls.method in PRUNING_METHODS:
        raise ValueError(f"pruning method {cls.method!r} is registered twice")
    PRUNING_METHODS[cls.method] = cls
    return cls


def prune_keys() -> set[str]:
    """Every key a recipe's prune settings may hold: each method's fields, `method` and version 2's `backend`."""
    return {"method", "backend"} | {f.name for cls in PRUNING_METHODS.values() for f in dataclasses.fields(cls)}


def prune_config_from_dict(raw: dict[str, Any], record: bool = False) -> PruneConfig:
    """The method's config from a recipe's prune settings, or (`record`) from a recorded flat settings dict, in
    which the fields of other methods sit at their defaults and are dropped."""
    raw = upgrade_prune_settings(raw) if record else dict(raw)
    method, backend = raw.pop("method", "magnitude"), raw.pop("backend", "torch")
    if backend == "neural-compressor" and method == "magnitude":  # version 2's spelling of the pattern method
        method = "pattern"
    elif backend != "torch":
        raise EdgeQAError(f"backend must be 'torch' or 'neural-compressor' (for method: magnitude), got {backend!r}")
    if method not in PRUNING_METHODS:
        raise EdgeQAError(f"prune method must be one of {', '.join(sorted(PRUNING_METHODS))}, got {method!r}")
    cls = PRUNING_METHODS[method]
    own = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted(k for k in set(raw) - own if not (record and k in FLAT_V2 and raw[k] == FLAT_V2[k]))
    if foreign:
        others = [
            m for m, c in sorted(PRUNING_METHODS.items()) if set(foreign) <= {f.name for f in dataclasses.fields(c)}
        ]
        where = f" (settings of {' or '.join(others)})" if others else ""
        raise EdgeQAError(
            f"prune method {method} takes no {', '.join(foreign)}{where}; it takes {', '.join(sorted(own))}"
        )
    return config_from_dict(cls, {k: v for k, v in raw.items() if k in own}, f"prune ({method})")


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """What every pruning method has; a method overrides what it does differently."""

    method: ClassVar[str]

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            if isinstance(getattr(self, name, None), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        check_field_types(self, f"prune ({self.method})")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("sparsity", "heads", "ffn", "initial") and not 0 <= value < 1:
                raise EdgeQAError(f"{f.name} must be in [0, 1), got {value!r}")
            if f.name.endswith(("_batches", "_every")) and value < 1:
                raise EdgeQAError(f"{f.name} must be positive, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Refuse combinations of this method's settings that mean nothing (a bad recipe fails before any work)."""

    @property
    def needs_data(self) -> bool:
        """Whether pruning itself (before any recovery) reads training windows."""
        return self.data_windows > 0

    @property
    def data_windows(self) -> int:
        """How many training windows pruning itself reads."""
        return 0

    needs_training: ClassVar[bool] = False  # pruned only while recovery training runs (no `apply` at once)
    why_data = "pruning reads training windows"  # said when a recipe gives no training data for `needs_data`

    def to_dict(self) -> dict[str, Any]:
        """The record (version 2's flat layout): what step.json compares and prune.json keeps."""
        return {**FLAT_V2, **config_to_dict(self), **FLAT_V2_SPELLING.get(self.method, {"method": self.method})}

    def check_model(self, config) -> None:
        """Refuse, from a model's transformers config alone, what this method cannot do to it."""

    def check_recovery(self, recovery: DistillConfig) -> None:
        """Refuse recovery training this method cannot ride."""

    def apply(self, model, trainset=None, gradual: bool = False) -> dict[str, Any]:
        """Prune `model` in place; with `gradual`, as it stands before recovery. Returns a summary for the record."""
        raise NotImplementedError

    def follow(self, student, trainset, step: int, total: int) -> None:
        """After each recovery step: move the pruning along its schedule."""

    def at_target(self, step: int, total: int) -> bool:
        """Whether the pruning has reached what was asked: before that, a better score only means fewer zeros."""
        return True

    def sparsity_scope(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The layers whose zeros the record counts (include, exclude)."""
        return DEFAULT_INCLUDE, ()

    def record(self, model) -> dict[str, Any]:
        """What the pruned model's record adds beyond its zeros (a shape, say)."""
        return {}

    def describe(self, record: dict[str, Any]) -> str:
        """What was asked, in one line for the report."""
        raise NotImplementedError

    def hooks(self) -> Hooks:
        """How the training loop carries this pruning through recovery: prune first, follow each step, and save the
        model as its masks make it."""
        from edgeqa.compress.train_config import Hooks  # imports torch: recipes are parsed without it

        held: dict[str, Any] = {}

        def prepare(student, trainset) -> None:
            held["trainset"] = trainset
            self.apply(student, trainset, gradual=True)

        return Hooks(
            prepare=prepare,
            after_step=lambda student, stage, step, total: self.follow(student, held["trainset"], step, total),
            to_save=self.baked,
            may_keep=lambda stage, step, total: self.at_target(step, total),
            fingerprint={"prune": self.to_dict()},
        )

    def baked(self, student):
        """The model as it is saved (a method with masks folds them into a copy)."""
        return student
