"""SQuAD v1.1 and v2.0 data: read the official JSON layout (plain or gzipped), validate its shape, take subsets.

A file that is not SQuAD-shaped fails with the file name and the JSON path of the first problem, so a user can
find it without a debugger. A `datasets` hub id is accepted when the hub is reachable; offline it fails at once.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeqa.bench.files import EdgeQAError, read_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SquadExample:
    """One question. `answers` is empty for an unanswerable (v2.0) question."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]
    title: str = ""

    @property
    def is_impossible(self) -> bool:
        return not self.answers


@dataclass
class SquadDataset:
    source: str
    version: str  # "1.1" or "2.0": decides which official metric applies
    examples: list[SquadExample] = field(default_factory=list)

    @property
    def is_v2(self) -> bool:
        return self.version.startswith("2")

    def __len__(self) -> int:
        return len(self.examples)

    def by_id(self) -> dict[str, SquadExample]:
        return {ex.id: ex for ex in self.examples}


def load_squad(source: str | Path, limit: int | None = None) -> SquadDataset:
    """Load a SQuAD file (or, when online, a `datasets` hub id such as `squad`); keep the first `limit` questions."""
    if limit is not None and limit < 1:
        raise EdgeQAError(f"--limit must be a positive number of questions, got {limit}")
    path = Path(source)
    if path.exists() or _looks_like_path(str(source)):
        dataset = parse_squad(read_json(path, "SQuAD file"), str(path))
    else:
        dataset = _load_from_hub(str(source))
    if limit is not None:
        dataset.examples = dataset.examples[:limit]
    if not dataset.examples:
        raise EdgeQAError(f"{source}: holds no questions")
    log.info("loaded %d questions from %s (SQuAD v%s)", len(dataset), source, dataset.version)
    return dataset


def parse_squad(doc: Any, source: str) -> SquadDataset:
    """Turn a parsed SQuAD JSON document into examples, naming the first field that is not SQuAD-shaped."""

    def need(obj: Any, key: str, kind: type, where: str) -> Any:
        if not isinstance(obj, dict):
            raise EdgeQAError(f"{source}: not a SQuAD file: {where} should be an object")
        if key not in obj:
            raise EdgeQAError(f'{source}: not a SQuAD file: {where} has no "{key}"')
        value = obj[key]
        if not isinstance(value, kind):
            raise EdgeQAError(f'{source}: not a SQuAD file: {where}."{key}" should be a {kind.__name__}')
        return value

    examples: list[SquadExample] = []
    seen: set[str] = set()
    has_impossible = False
    for a, article in enumerate(need(doc, "data", list, "the top level")):
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(need(article, "paragraphs", list, f"data[{a}]")):
            where_p = f"data[{a}].paragraphs[{p}]"
            context = need(paragraph, "context", str, where_p)
            for q, qa in enumerate(need(paragraph, "qas", list, where_p)):
                where = f"{where_p}.qas[{q}]"
                qid = need(qa, "id", str, where)
                question = need(qa, "question", str, where)
                impossible = bool(qa.get("is_impossible", False))
                has_impossible |= impossible
                answers = [] if impossible else need(qa, "answers", list, where)
                texts, starts = [], []
                for i, ans in enumerate(answers):
                    texts.append(need(ans, "text", str, f"{where}.answers[{i}]"))
                    starts.append(int(ans.get("answer_start", -1)))  # `need` has checked it is an object
                if qid in seen:
                    raise EdgeQAError(f"{source}: question id {qid!r} appears twice (second at {where})")
                seen.add(qid)
                examples.append(SquadExample(qid, question, context, tuple(texts), tuple(starts), title))
    version = str(doc.get("version", "")).lstrip("v") or "1.1"
    if has_impossible:
        version = "2.0"
    return SquadDataset(source=source, version=version, examples=examples)


def _looks_like_path(source: str) -> bool:
    """Anything that cannot be a hub id (`squad`, `rajpurkar/squad_v2`) is treated as a file path."""
    return source.endswith((".json", ".gz")) or source.startswith((".", os.sep, "~")) or source.count("/") > 1


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A short TCP probe, so an offline machine gets an answer in seconds instead of a library's long retries."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_from_hub(dataset_id: str) -> SquadDataset:
    if not _hub_reachable():
        raise EdgeQAError(
            f"{dataset_id}: no such file, and the Hugging Face hub is not reachable (offline) to load it as a "
            "dataset id; pass a SQuAD JSON file instead"
        )
    try:
        import datasets
    except ImportError as e:
        raise EdgeQAError(f"{dataset_id}: loading hub datasets needs `pip install edgeqa[hub]`") from e
    try:
        split = datasets.load_dataset(dataset_id, split="validation")
    except Exception as e:  # the hub raises many types; all mean "could not load it"
        raise EdgeQAError(f"{dataset_id}: cannot load from the hub: {e}") from e
    missing = {"id", "question", "context", "answers"} - set(split.column_names)
    if missing:
        raise EdgeQAError(f"{dataset_id}: not a SQuAD-shaped dataset, missing columns {sorted(missing)}")
    examples = [
        SquadExample(
            str(row["id"]),
            row["question"],
            row["context"],
            tuple(row["answers"]["text"]),
            tuple(int(s) for s in row["answers"]["answer_start"]),
            row.get("title", ""),
        )
        for row in split
    ]
    version = "2.0" if any(not ex.answers for ex in examples) else "1.1"
    return SquadDataset(source=dataset_id, version=version, examples=examples)
