"""The recipe's step kinds, one module each; importing this package registers them all (`pipeline.step`).

Each module imports what its step runs (the exporters, quantizers, trainers) inside `make` and `run`, not at the
top: parsing and checking a recipe, and the ONNX-only commands built on the same steps, must work without torch.
These are the library's function-local imports of its own modules; everywhere else imports sit at the top.
"""

from edgeqa.pipeline.steps import (
    bench_step,
    distill_step,
    export_step,
    fuse_step,
    mobile_step,
    prune_step,
    quantize_step,
    report_step,
    targets_step,
    torch_int8_step,
)

__all__ = [
    "bench_step",
    "distill_step",
    "export_step",
    "fuse_step",
    "mobile_step",
    "prune_step",
    "quantize_step",
    "report_step",
    "targets_step",
    "torch_int8_step",
]
