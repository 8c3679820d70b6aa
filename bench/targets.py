"""Targets a report checks and a recipe makes models for: a speed at a share of the reference's F1.

The speed is a speed-up over the report's reference (`speedup: 3`), or a latency in milliseconds (`ms: 20`), the
p50 a user would see on this machine. Either is read at batch 1 and the report's first shape (`latency: fixed`) or
per real question, end to end (`latency: questions`, bench/question_latency.py): a speed-up at the fixed shape by
default, milliseconds per question by default, as users ask for them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from edgeqa.bench.files import EdgeQAError, check_field_types

LATENCIES = ("fixed", "questions")
LATENCY_KEYS = {"fixed": "p50_ms", "questions": "question_p50_ms"}  # a report row's (and a shapes table's) p50
SPEEDUP_KEYS = {"fixed": "speedup", "questions": "question_speedup"}  # a report row's speed-up over its reference
TARGET_KEYS = {"speedup", "ms", "f1_share", "latency"}  # a target in a recipe
TARGET_FORM = "{speedup: X or ms: Y, f1_share: Z[, latency: fixed or questions]}"


@dataclass(frozen=True)
class Target:
    """`speedup` times the reference's speed or more, or `ms` milliseconds or less, at `f1_share` of the reference's
    F1 or more; `latency` says where the speed is read (None: fixed for a speed-up, questions for milliseconds)."""

    speedup: float | None = None
    f1_share: float | None = None  # required; a default only so that `speedup` may be left out
    latency: str | None = None
    ms: float | None = None

    def __post_init__(self) -> None:
        check_field_types(self, "target")
        if (self.speedup is None) == (self.ms is None):
            raise EdgeQAError(f"a target gives a speedup or ms (milliseconds), one of them, got {self!r}")
        if self.speedup is not None and not self.speedup > 0:
            raise EdgeQAError(f"a target's speedup must be a positive number, got {self.speedup!r}")
        if self.ms is not None and not self.ms > 0:
            raise EdgeQAError(f"a target's ms must be a positive number, got {self.ms!r}")
        if self.f1_share is None:
            raise EdgeQAError("a target needs f1_share, the share of the reference's F1 it must keep")
        if not 0 < self.f1_share <= 1:
            raise EdgeQAError(f"a target's f1_share must be in (0, 1], got {self.f1_share!r}")
        if self.latency is None:
            object.__setattr__(self, "latency", "fixed" if self.ms is None else "questions")
        if self.latency not in LATENCIES:
            raise EdgeQAError(f"a target's latency must be fixed or questions, got {self.latency!r}")

    @classmethod
    def parse(cls, text: str) -> Target:
        """As the CLI takes it: `3:0.98` (3x at 98% of the reference's F1), `20ms:0.9` (20 ms per question at 90%),
        a third field naming the latency (`3:0.98:questions`, `20ms:0.9:fixed`)."""
        speed, _, rest = text.partition(":")
        share, _, latency = rest.partition(":")
        try:
            ms = float(speed.removesuffix("ms")) if speed.endswith("ms") else None
            return cls(None if ms is not None else float(speed), float(share), latency or None, ms)
        except ValueError:
            raise EdgeQAError(f"a target is SPEEDUP:F1_SHARE or MSms:F1_SHARE such as 3:0.98 or 20ms:0.9, "
                              f"got {text!r}") from None  # fmt: skip

    @property
    def label(self) -> str:
        """`3x` or `20ms`: in the names of the models made for it."""
        return f"{self.speedup:g}x" if self.ms is None else f"{self.ms:g}ms"

    @property
    def key(self) -> str:
        """The row field it is judged on: a speed-up (higher is faster) or a p50 in ms (lower is faster)."""
        return SPEEDUP_KEYS[self.latency] if self.ms is None else LATENCY_KEYS[self.latency]

    def fast_enough(self, value: float) -> bool:
        return value >= self.speedup if self.ms is None else value <= self.ms

    def faster(self, value: float) -> float:
        """A value that sorts the faster the larger, whichever field the target reads."""
        return value if self.ms is None else -value

    def describe(self) -> str:
        """`>= 3x at >= 98%` or `<= 20 ms at >= 90%`."""
        speed = f">= {self.speedup:g}x" if self.ms is None else f"<= {self.ms:g} ms"
        return f"{speed} at >= {self.f1_share:.0%}"


def check_targets(rows: list[dict], reference: dict, targets: tuple[Target, ...]) -> list[dict[str, Any]]:
    """For each target: is it met, the most accurate row at its speed (and how much F1 it lacks), and the fastest row
    at its F1, so that a miss says by how much, both ways. Rows need `speedup` (and `question_speedup`) already."""

    def brief(row: dict | None, t: Target) -> dict | None:  # the row's speed-up, or its p50 as `ms`
        return None if row is None else {"name": row["name"], "speedup" if t.ms is None else "ms": row[t.key],
                                         "f1": row["f1"]}  # fmt: skip

    out = []
    for t in targets:
        timed = [r for r in rows if r.get(t.key) is not None]
        if not timed:
            raise EdgeQAError(f"target {t.describe()} is per question, but no row was timed per question (bench "
                              "questions 0, or no eval data)")  # fmt: skip
        needed = t.f1_share * reference["f1"]  # compared unrounded; rounded only where it is shown
        best = max((r for r in timed if t.fast_enough(r[t.key])), key=lambda r: r["f1"], default=None)
        fastest = max((r for r in timed if r["f1"] >= needed), key=lambda r: t.faster(r[t.key]), default=None)
        met = best is not None and best["f1"] >= needed
        short = None if met or best is None else round(needed - best["f1"], 2)
        out.append({**dataclasses.asdict(t), "f1_needed": round(needed, 2), "met": met,
                    "best_at_speed": brief(best, t), "f1_short": short,
                    "fastest_at_f1": brief(fastest, t)})  # fmt: skip
    return out
