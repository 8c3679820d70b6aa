"""ONNX Runtime int8 quantization: dynamic, and static (QDQ) calibrated on SQuAD train windows.

One config dataclass describes a quantization and round-trips to JSON, so a recipe, a report row and the saved
folder (`quantization.json`) all say the same thing. Hardware presets follow the instruction sets: on AVX-512
VNNI (and ARM's dot-product instructions) u8 x s8 products cannot saturate, so full range is safe; plain AVX2 and
AVX-512 without VNNI use 16-bit intermediate sums (vpmaddubsw) that can saturate, so weights use 7 bits
(reduce_range) there. The "auto" preset reads the CPU (bench.cpu) and picks the one that fits it.
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeqa.bench.cpu import CPU, this_cpu
from edgeqa.bench.engines import ONNX_NAME, SESSION_FILE, load_tokenizer, resolve_model
from edgeqa.bench.files import EdgeQAError, atomic_dir, check_field_types, write_json
from edgeqa.bench.qa import QAConfig, batches, tokenize
from edgeqa.bench.serial import config_from_dict, config_to_dict
from edgeqa.bench.squad import SquadExample, load_squad
from edgeqa.export.onnx import check_parity, copy_model_metadata, write_parity

log = logging.getLogger(__name__)

MODES = ("dynamic", "static")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantizeConfig:
    mode: str = "dynamic"
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_activations: bool = False
    op_types: tuple[str, ...] = ()  # empty: ORT's default set for the mode
    exclude: tuple[str, ...] = ()  # node-name glob patterns kept in float, e.g. "*qa_outputs*"
    calibration_method: str = "minmax"
    calibration_samples: int = 256  # static only: SQuAD train windows fed through the float model
    calibration_percentile: float = 99.999
    # ONNX Runtime graph optimisers to switch off when the model is loaded (written to session.json, which
    # edgeqa's engine and mobile conversion read); see PRESETS for why.
    runtime_disabled_optimizers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_field_types(self, "quantize")
        if self.mode not in MODES:
            raise EdgeQAError(f"quantize mode must be one of {MODES}, got {self.mode!r}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise EdgeQAError(
                f"calibration method must be one of {CALIBRATION_METHODS}, got {self.calibration_method!r}"
            )
        if self.calibration_samples < 1:
            raise EdgeQAError("calibration_samples must be positive")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> QuantizeConfig:
        return config_from_dict(cls, raw, "quantization")


@dataclass(frozen=True)
class Preset:
    """A hardware preset: the settings int8 gets on a machine class, why, and the CPU classes `auto` picks it for."""

    name: str
    fits: tuple[str, ...]  # bench.cpu instruction classes (`CPU.isa`) this preset is made for
    settings: tuple[tuple[str, Any], ...]  # QuantizeConfig fields over their defaults
    why: str

    def config(self, **overrides: Any) -> QuantizeConfig:
        return QuantizeConfig.from_dict({**dict(self.settings), **overrides})


PRESETS: dict[str, Preset] = {}
AUTO = "auto"


def register_preset(p: Preset) -> Preset:
    taken = [isa for isa in p.fits if isa in preset_for_isa()]
    if p.name in PRESETS or taken:
        raise ValueError(f"preset {p.name!r} or its CPU classes {taken} are registered twice")
    PRESETS[p.name] = p
    return p


def preset_for_isa() -> dict[str, str]:
    """bench.cpu's instruction class -> the preset that fits it."""
    return {isa: p.name for p in PRESETS.values() for isa in p.fits}


# Optimum's preset names where they exist. On the AMX Xeon, ORT 1.32's SkipLayerNormalization fusion made the int8
# BERT graph slower (23.7 against 30.6 ms p50, batch 1 x 384, 2 threads: recipes/int8-ablation.yaml); for the
# others see docs/machines.md.
_VNNI_WHY = "u8 x s8 products sum in 32 bits (vpdpbusd, AMX tiles), so weights keep all 8 bits"
_SLN_OFF = ("runtime_disabled_optimizers", ("SkipLayerNormFusion",))
register_preset(
    Preset(
        "amx",
        ("amx_int8",),
        (("per_channel", True), ("reduce_range", False), _SLN_OFF),
        f"{_VNNI_WHY}; SkipLayerNormFusion off (slower int8 graph on the AMX Xeon)",
    )
)
register_preset(
    Preset(
        "avx512_vnni",
        ("avx512_vnni",),
        (("per_channel", True), ("reduce_range", False), _SLN_OFF),
        f"{_VNNI_WHY}; SkipLayerNormFusion off, as on AMX",
    )
)
register_preset(Preset("avx_vnni", ("avx_vnni",), (("per_channel", True), ("reduce_range", False)), _VNNI_WHY))
register_preset(
    Preset(
        "avx512",
        ("avx512",),
        (("per_channel", True), ("reduce_range", True)),
        "pairs of u8 x s8 products sum in 16 bits (vpmaddubsw) and can saturate: 7-bit weights",
    )
)
register_preset(
    Preset(
        "avx2",
        ("avx2", "other"),
        (("per_channel", True), ("reduce_range", True)),
        "pairs of u8 x s8 products sum in 16 bits (vpmaddubsw) and can saturate: 7-bit weights "
        "(a CPU below AVX2 gets them too: safe anywhere)",
    )
)
register_preset(
    Preset(
        "arm64",
        ("arm64_i8mm", "arm64_dotprod", "arm64"),
        (("per_channel", True), ("reduce_range", False)),
        "the dot-product (sdot/udot) and i8mm instructions sum in 32 bits: no saturation",
    )
)
PRESET_CHOICES = (AUTO, *PRESETS)


def preset_for(cpu: CPU) -> str:
    """The preset that fits `cpu`'s int8 instructions."""
    return preset_for_isa()[cpu.isa]


def preset_record(name: str, cpu: CPU | None = None) -> dict[str, Any]:
    """What was asked, what was chosen, whether it fits the CPU, and that in one line: kept in quantization.json, and
    the report prints its description.

    A named preset for another machine class is allowed (a phone's model is made on a laptop) but recorded and
    warned about, since its timings on this machine say nothing about the machine it was made for.
    """
    if name != AUTO and name not in PRESETS:
        raise EdgeQAError(f"unknown hardware preset {name!r}; choose one of {', '.join(PRESET_CHOICES)}")
    cpu = cpu or this_cpu()
    fitting = preset_for(cpu)
    chosen = fitting if name == AUTO else name
    record = {"asked": name, "chosen": chosen, "fits_cpu": chosen == fitting, "cpu": cpu.to_dict()}
    record["description"] = describe_preset(record)
    if chosen != fitting:
        record["warning"] = (
            f"preset {chosen!r} does not fit this CPU ({cpu.model}, int8 class {cpu.isa}), which would get "
            f"{fitting!r}; its speed and accuracy here are not those of the machines it is meant for"
        )
    return record


def describe_preset(record: dict[str, Any]) -> str:
    """A preset record in one line: 'avx2 (chosen for a CPU of class avx2)'. Also describes records written before
    the description was kept."""
    how = "chosen for" if record["asked"] == AUTO else "named, made on"
    fit = "" if record["fits_cpu"] else ", does not fit it"
    return f"{record['chosen']} ({how} a CPU of class {record['cpu']['isa']}{fit})"


def preset(name: str, cpu: CPU | None = None, **overrides: Any) -> QuantizeConfig:
    """The config of a named preset, or of the one that fits this CPU for "auto", with `overrides` on top."""
    return PRESETS[preset_record(name, cpu)["chosen"]].config(**overrides)


def quantize(
    onnx_dir: str | Path,
    out_dir: str | Path,
    cfg: QuantizeConfig,
    calibration_data: str | Path | None = None,
    qa_cfg: QAConfig = QAConfig(),
    parity_examples: list[SquadExample] | None = None,
    preset_info: dict[str, Any] | None = None,
) -> Path:
    """Quantize the ONNX model in `onnx_dir` into `out_dir` (model.onnx, tokenizer, config, quantization.json).

    With `parity_examples`, parity.json records how far int8 moved logits and answers from the float model;
    int8 is expected to move them, so this informs rather than fails (EM/F1 on the dev set is the verdict).
    `preset_info` (from `preset_record`) is kept in quantization.json, and its warning logged.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    backend, model_path, folder = resolve_model(onnx_dir)
    if backend != "onnxruntime":
        raise EdgeQAError(f"{onnx_dir}: ONNX Runtime quantization needs an ONNX model; export it first")
    check_float_model(model_path, folder)
    excluded = excluded_nodes(model_path, cfg.exclude)
    if preset_info and preset_info.get("warning"):
        log.warning("%s: %s", out_dir, preset_info["warning"])
    with atomic_dir(out_dir) as tmp:
        target = tmp / ONNX_NAME
        if cfg.mode == "dynamic":
            # ONNX Runtime writes a shape-inferred copy beside the model it quantizes: beside a link in the staging
            # folder, not in the source model's folder, where a kill would leave it.
            source = tmp / "source" / model_path.name
            source.parent.mkdir()
            source.symlink_to(model_path.absolute())
            quantize_dynamic(
                str(source),
                str(target),
                op_types_to_quantize=list(cfg.op_types) or None,
                per_channel=cfg.per_channel,
                reduce_range=cfg.reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                extra_options={
                    "ActivationSymmetric": cfg.symmetric_activations,
                    "DefaultTensorType": onnx.TensorProto.FLOAT,
                },
            )
            shutil.rmtree(source.parent)
        else:
            if calibration_data is None:
                raise EdgeQAError("static quantization needs calibration data (a SQuAD file)")
            _quantize_static(model_path, target, tmp, cfg, excluded, calibration_data, qa_cfg, folder)
        copy_model_metadata(folder, tmp)
        record = {**cfg.to_dict(), "excluded_nodes": excluded, "source": str(onnx_dir)}
        if preset_info:
            record["preset"] = preset_info
        write_json(tmp / "quantization.json", record)
        if cfg.runtime_disabled_optimizers:
            write_json(tmp / SESSION_FILE, {"disabled_optimizers": list(cfg.runtime_disabled_optimizers)})
        if parity_examples:
            result = check_parity(onnx_dir, tmp, parity_examples, cfg=qa_cfg, raise_on_failure=False)
            write_parity(tmp, result, onnx_dir)
    log.info("quantized %s -> %s (%s, %d nodes kept in float)", onnx_dir, out_dir, cfg.mode, len(excluded))
    return Path(out_dir)


# Op types found only in quantized graphs: dynamic int8 (DynamicQuantizeLinear, MatMulInteger, ...), static QDQ
# (QuantizeLinear / DequantizeLinear) and ONNX Runtime's fused int8 ops; QLinear* (QLinearMatMul, ...) by prefix.
INT8_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "ConvInteger",
        "QuantizeLinear",
        "DequantizeLinear",
        "QAttention",
        "QGemm",
        "QEmbedLayerNormalization",
    }
)


def check_float_model(model_path: Path, folder: Path) -> None:
    """Refuse a model that is already int8: quantizing it again would write a copy that looks like a new int8 model
    while its scores and timings are those of the old one (or worse, int8 of int8)."""
    import onnx

    if (folder / "quantization.json").exists():
        raise EdgeQAError(
            f"{model_path}: is already int8 ({folder / 'quantization.json'} records its quantization); "
            "quantize the float model it was made from"
        )
    try:
        graph = onnx.load(str(model_path), load_external_data=False).graph
    except Exception as e:  # a truncated or foreign file: onnx raises DecodeError, ValueError, OSError
        raise EdgeQAError(f"{model_path}: cannot read this ONNX model: {e}") from e
    found = sorted({n.op_type for n in graph.node if n.op_type in INT8_OPS or n.op_type.startswith("QLinear")})
    if found:
        raise EdgeQAError(
            f"{model_path}: is already int8 (its graph holds {', '.join(found)}); quantize the float model it was "
            "made from"
        )


def excluded_nodes(model_path: Path, patterns: tuple[str, ...]) -> list[str]:
    """Expand glob patterns to node names; a pattern that matches nothing is a mistake worth an error."""
    if not patterns:
        return []
    import onnx

    names = [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node]
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise EdgeQAError(f"{model_path}: exclude pattern {pattern!r} matches no node")
        out.extend(h for h in hits if h not in out)
    return out


class _SquadCalibration:
    """Feeds real SQuAD windows (padded to their own length) to ORT's calibrator, one at a time."""

    def __init__(self, inputs: list[dict[str, np.ndarray]]):
        self._it = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def calibration_inputs(
    data: str | Path,
    tokenizer_dir: Path,
    input_names: list[str],
    samples: int,
    qa_cfg: QAConfig,
    fixed_length: bool = False,
) -> list[dict[str, np.ndarray]]:
    """The first `samples` windows of `data`, as single-window batches.

    `fixed_length` pads every window to max_length: ORT's histogram calibrators (entropy, percentile) stack the
    activations of all samples and need them of one shape; min-max does not, and sees no padding then.
    """
    dataset = load_squad(data, limit=samples)
    tokenizer = load_tokenizer(tokenizer_dir)
    features = tokenize(
        tokenizer, [e.question for e in dataset.examples], [e.context for e in dataset.examples], qa_cfg
    )
    pad_id = tokenizer.pad_token_id or 0
    out = [inputs for _, inputs in batches(features, 1, pad_id, input_names)][:samples]
    if fixed_length:
        for inputs in out:
            width = inputs["input_ids"].shape[1]
            for name, arr in inputs.items():
                fill = pad_id if name == "input_ids" else 0
                inputs[name] = np.pad(arr, ((0, 0), (0, qa_cfg.max_length - width)), constant_values=fill)
    return out


def _quantize_static(model_path, target, tmp, cfg, excluded, calibration_data, qa_cfg, folder) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp / "prepared.onnx"
    # Symbolic shape inference fails on BERT's attention reshapes; ONNX shape inference is enough here.
    quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
    input_names = [i.name for i in onnx.load(str(prepared), load_external_data=False).graph.input]
    reader = _SquadCalibration(
        calibration_inputs(
            calibration_data,
            folder,
            input_names,
            cfg.calibration_samples,
            qa_cfg,
            fixed_length=cfg.calibration_method != "minmax",
        )
    )
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.calibration_method]
    quantize_static(
        str(prepared),
        str(target),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(cfg.op_types) or None,
        per_channel=cfg.per_channel,
        reduce_range=cfg.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        calibrate_method=method,
        extra_options={
            "ActivationSymmetric": cfg.symmetric_activations,
            "CalibPercentile": cfg.calibration_percentile,
            "CalibTensorRangeSymmetric": False,
        },
    )
    prepared.unlink()
