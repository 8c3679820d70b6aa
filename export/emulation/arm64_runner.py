"""The part of `make arm64-check` that runs under aarch64 emulation: ONNX Runtime on saved windows, logits out.

It imports only the standard library, numpy and onnxruntime, because the emulated Python has nothing else (no torch, no
transformers, not even edgeqa's dependencies), and it is run as a file, not as `export.emulation.arm64_runner`, so that
`export/__init__` and `bench` are never imported. Tokenising and scoring stay on the x86 side
(export/emulation/arm64_check.py), which also runs this same file natively for the x86 reference: both sides then differ
only in the processor under ONNX Runtime.

The x86 side of `make avx2-check` (export/emulation/avx2_check.py) runs this file too, in the host's own venv, natively
and under qemu-x86_64 with an AVX2-only CPU model.

Input: an .npz with `w{i}.{input_ids,attention_mask,token_type_ids}` for windows 0..n-1 (batch 1, unpadded, as the
edgeqa engine runs dynamic int8). Output: an .npz with `w{i}.start`/`w{i}.end` and a JSON sidecar describing the
processor ONNX Runtime saw (and, with --probe, what ONNX Runtime's u8 x s8 product returned on a probe model built to
saturate 16-bit pair sums). Session settings mirror bench.engines.OrtEngine."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

KLEIDIAI_CONFIG = "mlas.disable_kleidiai"
# numpy's names for the x86 features that decide MLAS's int8 kernels -> /proc/cpuinfo's spelling.
X86_CPUID_FEATURES = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni"}


def cpu_features() -> str:
    """The kernel's (or qemu's emulated) Features line: what ONNX Runtime's cpuinfo probe reads on Linux/aarch64."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("features", "flags"):
                    return value.strip()
    except OSError:
        pass
    return ""


def cpuid_features() -> str:
    """On x86, the int8-relevant features the cpuid instruction reports in this process, as numpy detected them.

    qemu-x86_64 emulates cpuid (that is what ONNX Runtime's MLAS dispatches on) but not /proc/cpuinfo, which stays
    the host's, so under it only this says which processor ONNX Runtime saw. numpy 1.26 does not detect AMX or
    AVX-VNNI (qemu's TCG emulates neither). Empty off x86.
    """
    if platform.machine() not in ("x86_64", "AMD64"):
        return ""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:
        from numpy.core._multiarray_umath import __cpu_features__ as found
    return " ".join(flag for name, flag in X86_CPUID_FEATURES.items() if found.get(name))


def run_probe(probe: Path, threads: int) -> list[int]:
    """The probe model's output for an all-255 uint8 input (export.emulation.arm64_check.write_u8s8_probe builds it)."""
    session = open_session(probe, threads, [], False)
    (a,) = session.get_inputs()
    return session.run(None, {a.name: np.full(a.shape, 255, dtype=np.uint8)})[0].ravel().tolist()


def open_session(model: Path, threads: int, disabled_optimizers: list[str], disable_kleidiai: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if disable_kleidiai:
        opts.add_session_config_entry(KLEIDIAI_CONFIG, "1")
    return ort.InferenceSession(
        str(model), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers or None
    )


def run(
    inputs: Path,
    model: Path,
    out: Path,
    threads: int,
    disabled: list[str],
    disable_kleidiai: bool,
    probe: Path | None = None,
) -> dict:
    """Run every saved window through the model; write the logits and return what this run saw of the machine."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    session = open_session(model, threads, disabled, disable_kleidiai)
    t1 = time.perf_counter()
    names = [i.name for i in session.get_inputs()]
    logits: dict[str, np.ndarray] = {}
    with np.load(inputs) as arrays:
        n = int(arrays["n_windows"])
        for i in range(n):
            feed = {name: arrays[f"w{i}.{name}"][None, :] for name in names}
            start, end = session.run(["start_logits", "end_logits"], feed)
            logits[f"w{i}.start"], logits[f"w{i}.end"] = start[0], end[0]
    np.savez(out, **logits)
    info = {
        "machine": platform.machine(),
        "onnxruntime": ort.__version__,
        "device": ort.get_device(),
        "cpu_features": cpu_features(),
        "cpuid_features": cpuid_features(),
        "threads": threads,
        "disabled_optimizers": disabled,
        "disable_kleidiai": disable_kleidiai,
        "windows": n,
        # Seconds spent loading the model and running the windows, for sizing the question count; under emulation
        # they are no latency.
        "load_s": round(t1 - t0, 1),
        "windows_s": round(time.perf_counter() - t1, 1),
    }
    if probe is not None:
        info["probe_output"] = run_probe(probe, threads)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=Path, required=True, help=".npz of windows written by export.arm64_check")
    p.add_argument("--model", type=Path, required=True, help=".onnx or .ort file")
    p.add_argument("--out", type=Path, required=True, help=".npz for the logits (a .json beside it)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--disabled-optimizer", action="append", default=[], help="as in the model's session.json")
    p.add_argument("--disable-kleidiai", action="store_true", help=f"session config {KLEIDIAI_CONFIG}=1")
    p.add_argument("--probe", type=Path, help="u8 x s8 saturation probe model to run as well (avx2-check)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    info = run(
        args.inputs, args.model, args.out, args.threads, args.disabled_optimizer, args.disable_kleidiai, args.probe
    )
    log.info("%s on %s (%s): %d windows", args.model.name, info["machine"], info["device"], info["windows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
