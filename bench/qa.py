"""Extractive QA pre- and post-processing: question/context windows in, answer spans out.

Long contexts are cut into overlapping windows (`max_length` tokens, `doc_stride` tokens of overlap), each mapped
back to its question. The span search is vectorised over all windows at once: for each window the `n_best` start
and end positions inside the context are combined into an n_best x n_best score grid (start logit + end logit),
invalid spans (end before start, longer than `max_answer_length`) are masked, and the best window of a question
wins. This keeps post-processing a small fraction of model time.

Windows are cut by the `tokenizers` library directly, as transformers' tokenizer call would cut them, so that an
ONNX model runs without transformers (`bench.tokenizer` builds the tokenizer from a model folder).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.serial import config_to_dict
from edgeqa.bench.tokenizer import as_qa_tokenizer


@dataclass(frozen=True)
class QAConfig:
    """Tokenisation and span-search settings; the defaults are the ones SQuAD numbers are reported with."""

    max_length: int = 384
    doc_stride: int = 128
    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0  # SQuAD v2.0: answer "" when null score - best span score exceeds this

    def __post_init__(self) -> None:
        if self.max_length < 16:
            raise EdgeQAError(f"max_length must be at least 16 tokens, got {self.max_length}")
        if not 0 <= self.doc_stride < self.max_length // 2:
            raise EdgeQAError(f"doc_stride must be in [0, max_length/2), got {self.doc_stride}")
        if self.n_best < 1 or self.max_answer_length < 1:
            raise EdgeQAError("n_best and max_answer_length must be positive")

    def to_dict(self) -> dict:
        return config_to_dict(self)


class Windows(Protocol):
    """Token windows, padded on demand: `Features` below, or compress's labelled training windows."""

    input_ids: Sequence[Sequence[int]]
    token_type_ids: Sequence[Sequence[int]] | None

    @property
    def lengths(self) -> np.ndarray: ...


@dataclass
class Features:
    """Tokenised windows, unpadded; several per question when its context is longer than one window."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    example_index: np.ndarray  # (F,) which question each window belongs to
    offsets: np.ndarray  # (F, max_length, 2) character span of each context token; -1 for all other tokens
    cls_index: np.ndarray  # (F,) position of the classifier token, whose span stands for "no answer"

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64)


@dataclass(frozen=True)
class Answer:
    text: str
    score: float  # start logit + end logit of the chosen span
    probability: float  # softmax(start)[i] * softmax(end)[j] inside the winning window
    start_char: int
    end_char: int


def tokenize(tokenizer, questions: Sequence[str], contexts: Sequence[str], cfg: QAConfig) -> Features:
    """Tokenise question/context pairs into overlapping windows with context character offsets.

    The windows are what transformers' `tokenizer(..., truncation="only_second", stride=..., return_overflowing_tokens
    =True, return_offsets_mapping=True)` returns, computed on the Rust tokenizer directly.
    """
    tok = as_qa_tokenizer(tokenizer)
    context_seq = 1 if tok.question_first else 0
    questions = [q.lstrip() for q in questions]
    pairs = list(zip(questions, contexts, strict=True) if tok.question_first else zip(contexts, questions, strict=True))
    backend = tok.backend
    backend.no_padding()
    backend.encode_special_tokens = False
    _check_room(backend, questions, cfg)
    try:
        backend.enable_truncation(
            cfg.max_length,
            stride=cfg.doc_stride,
            strategy="only_second" if tok.question_first else "only_first",
            direction=tok.truncation_side,
        )
        encodings = backend.encode_batch(pairs)
    except Exception as e:  # the Rust tokenizer raises plain exceptions for impossible truncation
        raise EdgeQAError(
            f"cannot fit question and context windows into max_length={cfg.max_length} with "
            f"doc_stride={cfg.doc_stride}: {e}"
        ) from e
    windows = [(q, w) for q, enc in enumerate(encodings) for w in (enc, *enc.overflowing)]
    offsets = np.full((len(windows), cfg.max_length, 2), -1, dtype=np.int32)
    cls_index = np.zeros(len(windows), dtype=np.int64)
    cls_id = tok.cls_token_id
    for i, (_, w) in enumerate(windows):
        in_context = np.fromiter((s == context_seq for s in w.sequence_ids), dtype=bool)
        offsets[i, : len(w.ids)][in_context] = np.array(w.offsets)[in_context]
        cls_index[i] = w.ids.index(cls_id) if cls_id in w.ids else 0
    return Features(
        input_ids=[w.ids for _, w in windows],
        token_type_ids=[w.type_ids for _, w in windows] if tok.type_ids else None,
        example_index=np.fromiter((q for q, _ in windows), dtype=np.int64),
        offsets=offsets,
        cls_index=cls_index,
    )


def _check_room(backend: Tokenizer, questions: Sequence[str], cfg: QAConfig) -> None:
    """Refuse a question that leaves no room for `doc_stride` context tokens, which would panic the Rust tokenizer."""
    backend.no_truncation()
    room = cfg.max_length - backend.num_special_tokens_to_add(is_pair=True) - cfg.doc_stride
    for q, enc in zip(questions, backend.encode_batch(list(questions), add_special_tokens=False), strict=True):
        if len(enc.ids) >= room:
            raise EdgeQAError(
                f"the question {q[:60]!r} is {len(enc.ids)} tokens: too long for windows of max_length="
                f"{cfg.max_length} with doc_stride={cfg.doc_stride} (at most {room - 1})"
            )


def batches(
    features: Windows, batch_size: int, pad_id: int, input_names: Sequence[str]
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield (window indices, padded int64 inputs), longest windows first, padded only to the batch's longest."""
    order = np.argsort(-features.lengths, kind="stable")
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        arrays = pad(features, idx, pad_id)
        yield idx, {name: arrays[name] for name in input_names}


def pad(features: Windows, idx: Sequence[int], pad_id: int) -> dict[str, np.ndarray]:
    """The windows `idx` as int64 arrays padded to the longest of them: input_ids, attention_mask, token_type_ids."""
    width = int(max(len(features.input_ids[i]) for i in idx))
    ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(idx), width), dtype=np.int64)
    types = np.zeros((len(idx), width), dtype=np.int64)
    for row, i in enumerate(idx):
        n = len(features.input_ids[i])
        ids[row, :n] = features.input_ids[i]
        mask[row, :n] = 1
        if features.token_type_ids is not None:
            types[row, :n] = features.token_type_ids[i]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    features: Features,
    contexts: Sequence[str],
    cfg: QAConfig,
    allow_null: bool = False,
) -> list[Answer]:
    """Pick each question's answer from its windows' logits, shaped (windows, max_length), -inf past the end.

    With `allow_null` (SQuAD v2.0) the answer is "" when the best null score (classifier token as start and end,
    lowest over the question's windows) beats the best span by more than `cfg.null_threshold`.
    """
    n_windows, width = start_logits.shape
    in_context = features.offsets[:, :width, 0] >= 0
    start = np.where(in_context, start_logits, -np.inf)
    end = np.where(in_context, end_logits, -np.inf)
    k = min(cfg.n_best, width)
    top_start = np.argpartition(-start, k - 1, axis=1)[:, :k]
    top_end = np.argpartition(-end, k - 1, axis=1)[:, :k]
    grid = (
        np.take_along_axis(start, top_start, axis=1)[:, :, None] + np.take_along_axis(end, top_end, axis=1)[:, None, :]
    )
    span = top_end[:, None, :] - top_start[:, :, None]
    grid = np.where((span >= 0) & (span < cfg.max_answer_length), grid, -np.inf)
    flat = grid.reshape(n_windows, -1)
    best_flat = flat.argmax(axis=1)
    rows = np.arange(n_windows)
    window_score = flat[rows, best_flat]
    window_start = top_start[rows, best_flat // k]
    window_end = top_end[rows, best_flat % k]

    # The best window of each question: sort by (question, score) and keep the last of each question.
    order = np.lexsort((window_score, features.example_index))
    last = np.r_[features.example_index[order][1:] != features.example_index[order][:-1], True]
    best_window = dict(zip(features.example_index[order][last].tolist(), order[last].tolist(), strict=True))

    if allow_null:
        null = start_logits[rows, features.cls_index] + end_logits[rows, features.cls_index]
        min_null = np.full(len(contexts), np.inf)
        np.minimum.at(min_null, features.example_index, null)

    answers: list[Answer] = []
    for q, context in enumerate(contexts):
        w = best_window.get(q)
        score = float(window_score[w]) if w is not None else -np.inf
        if w is None or not np.isfinite(score) or (allow_null and min_null[q] - score > cfg.null_threshold):
            answers.append(Answer("", float(min_null[q]) if allow_null else score, 0.0, -1, -1))
            continue
        s, e = int(window_start[w]), int(window_end[w])
        begin, finish = int(features.offsets[w, s, 0]), int(features.offsets[w, e, 1])
        prob = float(_softmax_at(start_logits[w], s) * _softmax_at(end_logits[w], e))
        answers.append(Answer(context[begin:finish], score, prob, begin, finish))
    return answers


def _softmax_at(logits: np.ndarray, i: int) -> float:
    finite = logits[np.isfinite(logits)]
    return float(np.exp(logits[i] - finite.max()) / np.exp(finite - finite.max()).sum())
