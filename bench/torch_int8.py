"""PyTorch's dynamic int8 of nn.Linear: the PyTorch-side baseline that the ONNX int8 variants are compared with.

Kept on `torch.ao.quantization.quantize_dynamic`, which warns that it will be removed, rather than torchao's
`quantize_`: in eager mode torchao's int8 is no faster than fp32 on CPU, which defeats a speed baseline. The
measurements and the swap are in docs/exporter.md ("PyTorch int8").
"""

from __future__ import annotations

import torch


def quantize_linear_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose nn.Linear layers hold int8 weights and quantize their input at run time.

    One activation scale per input tensor, so a window's answer depends on the windows batched with it
    (engines.answers_depend_on_batch).
    """
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
