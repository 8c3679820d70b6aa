"""The question edgeqa asks a CUDA device about bf16, answered by torch's own `is_bf16_supported` on fake devices:
only bf16 in hardware counts, since emulated bf16 (T4, V100) is slower than fp32."""

from __future__ import annotations

import types

import pytest
import torch

from edgeqa.compress.devices import cuda_native_bf16, precision_for


def _fake_gpu(monkeypatch, major: int, minor: int, bf16_tensors_work: bool) -> None:
    """A CUDA device of compute capability `major.minor` on which bf16 tensors can (or cannot) be made, emulated."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: types.SimpleNamespace(major=major, minor=minor))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda _: bf16_tensors_work)


@pytest.mark.parametrize(
    ("gpu", "major", "minor", "emulated", "native", "chosen"),
    [
        ("T4", 7, 5, True, False, "fp32"),  # bf16 tensors work there, emulated: torch's default answer is yes
        ("V100", 7, 0, True, False, "fp32"),
        ("P100", 6, 0, False, False, "fp32"),
        ("A100", 8, 0, True, True, "bf16"),
        ("H100", 9, 0, True, True, "bf16"),
    ],
)
def test_only_native_cuda_bf16_counts(monkeypatch, gpu, major, minor, emulated, native, chosen):
    _fake_gpu(monkeypatch, major, minor, bf16_tensors_work=emulated)
    assert torch.cuda.is_bf16_supported() is emulated  # what torch says when asked without care
    assert cuda_native_bf16() is native
    precision = precision_for("auto", "cuda:0")
    assert precision.chosen == chosen
    assert precision.reason == ("auto: CUDA bf16" if native else "auto: no bf16 on this GPU")
    assert precision_for("bf16", "cuda:0").chosen == "bf16"  # asked for by name, it is given whatever the device


def test_the_cpu_is_not_asked_about_cuda(monkeypatch):
    def no_cuda_question(*args, **kwargs):
        raise AssertionError("a CPU run asked CUDA about bf16")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", no_cuda_question)
    assert precision_for("fp32", "cpu").chosen == "fp32"
    assert precision_for("auto", "cpu").reason.startswith("auto: ")
