"""Speed targets in, models out: which shape to make for a target, read from a machine's shapes table, and the steps
that make it from the teacher.

The rule: among the shapes predicted at least `margin` faster than the target asks, make the one that keeps the most
teacher layers, then the most heads, then the widest FFN. Why this order: at equal training time, a pruned model
that keeps every teacher layer beat one with layers dropped at about the same speed (slim-b-int8, six layers at a
third of their heads: F1 78.61 at 6.07x; quad-slim-int8, four layers: 72.83 at 6.78x, docs/results/front.md), and
FFN neurons cost accuracy least, as they cost latency least. The margin absorbs what the table cannot know: a made
model prunes heads by importance, unevenly over layers, and timings move a few percent between runs. Where no shape
is fast enough, the fastest one is made and the report says the target is missed and by how much.
"""

from __future__ import annotations

from typing import Any

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.shapes import TEACHER_INT8, Shape
from edgeqa.bench.targets import LATENCY_KEYS, Target
from edgeqa.compress.student import StudentSpec, teacher_layers
from edgeqa.pipeline.step import BASE_VARIANT


def _speedups(table: dict[str, Any], over: str, latency: str) -> dict[str, float]:
    """Predicted speed-up of every candidate (the teacher's own int8 model among them) over `over`."""
    key = LATENCY_KEYS[latency]
    ref = table["references"].get(over)
    if ref is None:
        raise EdgeQAError(f"the shapes table has no {over} timing (made where torch is not installed?): "
                          f"give targets over {TEACHER_INT8}")  # fmt: skip
    if ref.get(key) is None:
        raise EdgeQAError("the shapes table has no per-question timing: make it with --data, or use fixed latency")
    rows = {s["name"]: s for s in table["shapes"]}
    rows[table["teacher_shape"]] = table["references"][TEACHER_INT8]
    return {name: ref[key] / row[key] for name, row in rows.items() if row.get(key)}


def pick_shape(table: dict[str, Any], target: Target, over: str = BASE_VARIANT, margin: float = 0.05) -> dict[str, Any]:
    """The shape to make for `target` on the machine the table was timed on, with the reason in words. A target in
    milliseconds is read against the int8 teacher's time in the table (it is always timed): at most `ms / (1 +
    margin)`, so the margin works the same way both ways."""
    if target.ms is not None:
        over = TEACHER_INT8
    speedups = _speedups(table, over, target.latency)
    ref_ms = table["references"][over][LATENCY_KEYS[target.latency]]
    if target.ms is None:
        needed, asked = target.speedup * (1 + margin), f"{target.speedup:g}x"
        bar = f">= {needed:.2f}x"
    else:
        needed, asked = ref_ms / target.ms * (1 + margin), f"{target.ms:g} ms"
        bar = f"<= {target.ms / (1 + margin):.2f} ms"
    fast = [name for name, x in speedups.items() if x >= needed]
    if fast:
        name = max(fast, key=lambda n: (Shape.parse(n).layers, Shape.parse(n).heads, Shape.parse(n).ffn))
        why = (f"of the {len(fast)} of {len(speedups)} shapes predicted at {bar} ({asked} and a {margin:.0%} "
               f"margin), it keeps the most layers, then heads, then FFN neurons")  # fmt: skip
    else:
        name = max(speedups, key=lambda n: speedups[n])
        why = f"no shape is predicted at {bar} ({asked} and a {margin:.0%} margin): the fastest"
    shape = Shape.parse(name)
    return {"target": target.speedup, "ms": target.ms, "f1_share": target.f1_share, "latency": target.latency,
            "over": over, "shape": name, "layers": shape.layers, "heads": shape.heads, "ffn": shape.ffn,
            "predicted_speedup": round(speedups[name], 3), "predicted_ms": round(ref_ms / speedups[name], 3),
            "fast_enough": bool(fast), "why": why}  # fmt: skip


def plan_steps(prefix: str, shape: Shape, teacher: Shape, training: dict[str, Any]) -> list[tuple[str, dict]]:
    """The recipe steps (kind, settings) that make `shape` from the teacher and ship it as `{prefix}-int8`.

    Fewer layers: a DistilBERT-style student of evenly spread teacher layers; fewer heads or FFN neurons: structured
    pruning by gradient importance with recovery by distillation. Both: the student first, then pruned, the training
    budget (`training["steps"]`) split by `training["distill_share"]`."""
    heads = round(1 - shape.heads / teacher.heads, 4)
    ffn = round(1 - shape.ffn / teacher.ffn, 4)
    budget, stage = training["steps"], dict(training["stage"])
    train = dict(training["train"])
    steps: list[tuple[str, dict]] = []
    source = BASE_VARIANT
    distilled = 0
    if shape.layers < teacher.layers:
        layers = teacher_layers(StudentSpec(num_hidden_layers=shape.layers), teacher.layers)
        distilled = round(budget * training["distill_share"]) if heads or ffn else budget
        name = f"{prefix}-student" if heads or ffn else prefix
        steps.append(("distill", {"name": name, "student": {"layers": list(layers)}, "train": train,
                                  "stages": [{**stage, "max_steps": distilled}]}))  # fmt: skip
        source = name
    if heads or ffn:
        prune = {"name": prefix, "from": source, "method": "structured", "importance": "gradient", "train": train,
                 "stages": [{**stage, "max_steps": budget - distilled}]}  # fmt: skip
        prune.update({k: v for k, v in (("heads", heads), ("ffn", ffn)) if v})
        steps.append(("prune", prune))
        source = prefix
    steps += [
        ("export", {"name": f"{prefix}-onnx", "from": source}),
        ("fuse", {"name": f"{prefix}-fused", "from": f"{prefix}-onnx", "fusions": ["attention"]}),
        ("quantize", {"name": f"{prefix}-int8", "from": f"{prefix}-fused"}),
    ]
    return steps
