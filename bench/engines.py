"""QA inference behind one interface: a `transformers` PyTorch folder or an ONNX file run by ONNX Runtime.

An engine is a callable from padded int64 inputs to (start_logits, end_logits) numpy arrays; `QAModel` pairs it
with the tokenizer and does windows -> batches -> logits -> answers. Thread counts are always set explicitly,
because the libraries' defaults differ and latency numbers mean nothing without them.

An ONNX model needs only onnxruntime, tokenizers and numpy (an edge box's install): torch and transformers are
imported inside the functions that load PyTorch folders.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import Answer, QAConfig, batches, best_spans, tokenize
from edgeqa.bench.squad import SquadExample
from edgeqa.bench.tokenizer import QATokenizer, as_qa_tokenizer, load_qa_tokenizer

log = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
ORT_NAME = "model.ort"  # ONNX Runtime's mobile (flatbuffer) format
SESSION_FILE = "session.json"  # ONNX Runtime settings a model folder asks for, e.g. {"disabled_optimizers": [...]}
TORCH_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def default_threads() -> int:
    """Physical cores: hyper-threads do not speed up matrix products and make latency noisier."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil is a dependency
        return os.cpu_count() or 1


class Engine(Protocol):
    backend: str
    input_names: tuple[str, ...]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class TorchEngine:
    model: object  # a transformers *ForQuestionAnswering module
    input_names: tuple[str, ...]
    threads: int
    backend: str = "torch"

    def __post_init__(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        self.model.eval()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        return out.start_logits.float().numpy(), out.end_logits.float().numpy()


@dataclass
class OrtEngine:
    path: Path
    threads: int
    session: object = field(init=False, repr=False)
    disabled_optimizers: list[str] = field(init=False, default_factory=list)
    input_names: tuple[str, ...] = field(init=False)
    backend: str = "onnxruntime"

    def __post_init__(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.disabled_optimizers = session_settings(self.path.parent).get("disabled_optimizers", [])
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                opts,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=self.disabled_optimizers or None,
            )
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise EdgeQAError(f"{self.path}: ONNX Runtime cannot load this model: {e}") from e
        names = tuple(i.name for i in self.session.get_inputs())
        unknown = [n for n in names if n not in MODEL_INPUTS]
        if unknown or "input_ids" not in names:
            raise EdgeQAError(
                f"{self.path}: ONNX inputs {list(names)} do not match a QA model "
                f"(expected input_ids and some of attention_mask, token_type_ids)"
            )
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs[:2] != ["start_logits", "end_logits"]:
            raise EdgeQAError(f"{self.path}: ONNX outputs {outputs} are not start_logits, end_logits")
        self.input_names = names

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.session.run(["start_logits", "end_logits"], dict(inputs))
        return start, end


@dataclass
class QAModel:
    """An engine and its tokenizer: questions in, answers out."""

    engine: Engine
    tokenizer: QATokenizer  # a transformers fast tokenizer is wrapped on the way in
    source: Path

    def __post_init__(self) -> None:
        self.tokenizer = as_qa_tokenizer(self.tokenizer)

    def answer(
        self,
        examples: Sequence[SquadExample],
        cfg: QAConfig = QAConfig(),
        batch_size: int = 16,
        allow_null: bool = False,
        progress: bool = True,
        timings: dict[str, float] | None = None,
    ) -> dict[str, Answer]:
        """Answers by question id; `timings`, when given, receives seconds spent in each stage."""
        contexts = [e.context for e in examples]
        t0 = time.perf_counter()
        features = tokenize(self.tokenizer, [e.question for e in examples], contexts, cfg)
        t1 = time.perf_counter()
        start, end = self.logits(features, batch_size, progress)
        t2 = time.perf_counter()
        answers = best_spans(start, end, features, contexts, cfg, allow_null)
        t3 = time.perf_counter()
        if timings is not None:
            timings.update(
                tokenize_s=t1 - t0,
                model_s=t2 - t1,
                postprocess_s=t3 - t2,
                windows=len(features),
                tokens=int(features.lengths.sum()),
            )
        return {ex.id: a for ex, a in zip(examples, answers, strict=True)}

    def logits(self, features, batch_size: int = 16, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Run every window; logits come back shaped (windows, longest window), -inf past each window's end."""
        width = int(features.lengths.max())
        start = np.full((len(features), width), -np.inf, dtype=np.float32)
        end = np.full_like(start, -np.inf)
        pad_id = self.tokenizer.pad_token_id or 0
        bar = tqdm(total=len(features), desc=f"{self.engine.backend} inference", unit="window", disable=not progress)
        lengths = features.lengths
        for idx, inputs in batches(features, batch_size, pad_id, self.engine.input_names):
            s, e = self.engine(inputs)
            n = inputs["input_ids"].shape[1]
            real = np.arange(n)[None, :] < lengths[idx][:, None]  # padding never holds an answer
            start[idx, :n] = np.where(real, s, -np.inf)
            end[idx, :n] = np.where(real, e, -np.inf)
            bar.update(len(idx))
        bar.close()
        return start, end


def predict(
    model: QAModel,
    examples: Sequence[SquadExample],
    cfg: QAConfig = QAConfig(),
    batch_size: int = 16,
    allow_null: bool = False,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> dict[str, str]:
    """The official predictions mapping, {question_id: answer_text}."""
    answers = model.answer(examples, cfg, batch_size, allow_null, progress, timings)
    return {qid: a.text for qid, a in answers.items()}


def session_settings(folder: Path) -> dict:
    """The ONNX Runtime settings a model folder asks for (session.json), or none."""
    path = folder / SESSION_FILE
    if not path.exists():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EdgeQAError(f"{path}: unreadable session settings: {e}") from e
    if not isinstance(settings, dict):
        raise EdgeQAError(f"{path}: session settings should be a JSON object")
    unknown = set(settings) - {"disabled_optimizers"}
    if unknown:
        raise EdgeQAError(f"{path}: unknown session settings {sorted(unknown)}; only disabled_optimizers is known")
    return settings


def resolve_model(path: str | Path) -> tuple[str, Path, Path]:
    """Decide the backend: (backend, model file or folder, tokenizer folder). ONNX wins when both are present."""
    path = Path(path)
    if not path.exists():
        raise EdgeQAError(f"{path}: no such model file or folder")
    if path.is_file():
        if path.suffix not in (".onnx", ".ort"):
            raise EdgeQAError(f"{path}: expected a model folder, an .onnx or an .ort file")
        return "onnxruntime", path, path.parent
    for name in (ONNX_NAME, ORT_NAME):
        if (path / name).exists():
            return "onnxruntime", path / name, path
    if (path / "config.json").exists() and any((path / w).exists() for w in TORCH_WEIGHTS):
        return "torch", path, path
    raise EdgeQAError(f"{path}: not a model folder (no {ONNX_NAME} or {ORT_NAME}, nor config.json with weights)")


def weight_files(path: str | Path) -> list[Path]:
    """The files that hold a model's weights, as it ships: model.onnx (and its external data), model.ort, or the
    PyTorch weight files."""
    backend, model_path, folder = resolve_model(path)
    if backend == "onnxruntime":
        return [model_path, *folder.glob(model_path.name + ".data"), *folder.glob("*.onnx_data")]
    return [folder / w for w in TORCH_WEIGHTS if (folder / w).exists()]


# Ops that quantize activations with a scale computed from the whole input tensor, batch included: each window's
# answer then depends on the windows batched with it.
BATCH_DEPENDENT_OPS = (b"DynamicQuantizeLinear", b"DynamicQuantizeMatMul")


def answers_depend_on_batch(path: str | Path, torch_int8: bool = False) -> bool:
    """Whether a model's answers change with the other windows in its batch (dynamic int8: one activation scale
    per tensor, so per batch). Such a model is scored the way it is deployed, one question at a time.

    Op types are stored as plain strings in both .onnx (protobuf) and .ort (flatbuffer) files, so a byte search finds
    them without onnx or a session."""
    backend, model_path, _ = resolve_model(path)
    if backend == "torch":
        return torch_int8  # PyTorch's dynamic int8 of nn.Linear: per-tensor activation scales too
    data = model_path.read_bytes()
    return any(op in data for op in BATCH_DEPENDENT_OPS)


def load_tokenizer(folder: Path):
    """transformers' tokenizer, for training and export, which save it; inference uses `load_qa_tokenizer`."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # transformers raises OSError/ValueError/KeyError for broken folders
        raise EdgeQAError(f"{folder}: cannot load a tokenizer from this folder: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise EdgeQAError(f"{folder}: the tokenizer is not a fast tokenizer; QA needs character offsets")
    return tokenizer


def check_qa_config(folder: Path) -> dict:
    """Refuse a folder whose config says it is not a question-answering model, before loading any weights."""
    config_path = folder / "config.json"
    if not config_path.exists():
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EdgeQAError(f"{config_path}: unreadable model config: {e}") from e
    archs = config.get("architectures") or []
    if archs and not any(a.endswith("ForQuestionAnswering") for a in archs):
        raise EdgeQAError(f"{folder}: not a question-answering model (architectures: {', '.join(archs)})")
    return config


def load_torch_qa_model(folder: str | Path):
    """Load a `transformers` QA model, refusing one whose QA head would be freshly initialised."""
    from transformers import AutoModelForQuestionAnswering

    folder = Path(folder)
    if folder.is_file():
        raise EdgeQAError(f"{folder}: expected a transformers model folder, got a file")
    check_qa_config(folder)
    try:
        model, info = AutoModelForQuestionAnswering.from_pretrained(str(folder), output_loading_info=True)
    except Exception as e:  # unsupported model type, broken weights, ...
        raise EdgeQAError(f"{folder}: cannot load as a question-answering model: {e}") from e
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise EdgeQAError(
            f"{folder}: has no trained question-answering head (missing weights: {', '.join(sorted(missing)[:4])})"
        )
    model.eval()
    return model


def load_qa_model(path: str | Path, threads: int | None = None, torch_int8: bool = False) -> QAModel:
    """Open a PyTorch folder or an ONNX model (folder with model.onnx, or the file) with its tokenizer.

    `torch_int8` applies PyTorch's dynamic int8 quantization to the nn.Linear layers after loading: the
    PyTorch-side baseline that the ONNX int8 variants are compared with.
    """
    threads = threads or default_threads()
    backend, model_path, tok_folder = resolve_model(path)
    tokenizer = load_qa_tokenizer(tok_folder)
    if backend == "torch":
        model = load_torch_qa_model(model_path)
        vocab = model.config.vocab_size
        if torch_int8:
            from edgeqa.bench.torch_int8 import quantize_linear_int8

            model = quantize_linear_int8(model)
        names = model_input_names(model)
        engine: Engine = TorchEngine(model, names, threads, backend="torch-int8" if torch_int8 else "torch")
    else:
        if torch_int8:
            raise EdgeQAError(f"{path}: torch int8 applies to PyTorch folders, not ONNX models")
        check_qa_config(tok_folder)
        engine = OrtEngine(model_path, threads)
        vocab = _config_vocab(tok_folder)
    if vocab is not None and len(tokenizer) > vocab:
        raise EdgeQAError(
            f"{tok_folder}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab}; "
            "they do not belong together"
        )
    log.info("loaded %s model from %s (%d threads)", backend, model_path, threads)
    return QAModel(engine, tokenizer, Path(path))


def model_input_names(model) -> tuple[str, ...]:
    """The standard QA inputs this model's forward takes (DistilBERT has no token_type_ids)."""
    import inspect

    params = set(inspect.signature(model.forward).parameters)
    return tuple(n for n in MODEL_INPUTS if n in params)


def _config_vocab(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / "config.json").read_text())["vocab_size"])
    except (OSError, KeyError, ValueError):
        return None
