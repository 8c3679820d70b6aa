"""The recipe's step kinds, one module each; importing this package registers them all (`pipeline.step`).

Each module imports what its step runs (the exporters, quantizers, trainers) inside `make` and `run`, not at the
top: parsing and checking a recipe, and the ONNX-only commands built on the same steps, must work without torch.
These are the library's function-local imports of its own modules; everywhere else imports sit at the top.
"""

from edgeqa.pipeline.steps import bench, distill, export, fuse, mobile, prune, quantize, report, torch_int8

__all__ = ["bench", "distill", "export", "fuse", "mobile", "prune", "quantize", "report", "torch_int8"]
