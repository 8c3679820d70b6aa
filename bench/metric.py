"""SQuAD EM/F1, computed as the official v1.1 and v2.0 evaluation scripts compute them.

The two scripts differ in small ways that move numbers, so both are kept apart here:
- v1.1 keeps every gold answer; F1 is 0 when no token is shared (so an empty prediction against an empty gold is 0).
- v2.0 drops gold answers that normalise to nothing and uses [""] for an unanswerable question; F1 is 1 when
  both sides are empty.
One deliberate difference from the scripts: a question without a prediction scores 0 and is counted as `missing`
in both versions (the v1.1 script does so; the v2.0 script would skip or crash on it).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeqa.bench.files import EdgeQAError, read_json
from edgeqa.bench.squad import SquadDataset

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse white space (in that order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str, v2: bool = False) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if v2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: tuple[str, ...], v2: bool) -> list[str]:
    if not v2:
        return list(answers)
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def score(dataset: SquadDataset, predictions: Mapping[str, str]) -> dict[str, Any]:
    """EM/F1 in percent over every question of `dataset`; v2.0 data adds the HasAns/NoAns breakdown."""
    v2 = dataset.is_v2
    per_question: dict[str, tuple[float, float]] = {}
    missing = 0
    for ex in dataset.examples:
        golds = gold_answers(ex.answers, v2)
        if ex.id not in predictions:
            missing += 1
            per_question[ex.id] = (0.0, 0.0)
            continue
        if not golds:  # a v1.1 question without gold answers cannot be matched (the official script crashes)
            per_question[ex.id] = (0.0, 0.0)
            continue
        pred = predictions[ex.id]
        per_question[ex.id] = (
            max(exact_match(pred, g) for g in golds),
            max(f1(pred, g, v2) for g in golds),
        )

    def summary(ids: list[str]) -> tuple[float, float, int]:
        if not ids:
            return 0.0, 0.0, 0
        em = 100.0 * sum(per_question[i][0] for i in ids) / len(ids)
        f = 100.0 * sum(per_question[i][1] for i in ids) / len(ids)
        return em, f, len(ids)

    em, f, total = summary([ex.id for ex in dataset.examples])
    result: dict[str, Any] = {"exact_match": em, "f1": f, "total": total, "missing": missing}
    if v2:
        for name, ids in (
            ("HasAns", [ex.id for ex in dataset.examples if not ex.is_impossible]),
            ("NoAns", [ex.id for ex in dataset.examples if ex.is_impossible]),
        ):
            em_, f_, n_ = summary(ids)
            result.update({f"{name}_exact": em_, f"{name}_f1": f_, f"{name}_total": n_})
    return result


def load_predictions(path: str | Path) -> dict[str, str]:
    """Read an official predictions file, `{question_id: answer_text}`, refusing anything else."""
    doc = read_json(path, "predictions file")
    if not isinstance(doc, dict):
        raise EdgeQAError(f"{path}: not a predictions file: expected a JSON object {{id: answer text}}")
    for qid, text in doc.items():
        if not isinstance(text, str):
            raise EdgeQAError(
                f"{path}: not a predictions file: the value for {qid!r} is {type(text).__name__}, expected text"
            )
    return doc
