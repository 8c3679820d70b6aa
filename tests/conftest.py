"""Shared fixtures: one factory for tiny random QA models, and the paths of the shared teacher and data."""

from __future__ import annotations

import gzip
import json
import string
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__import__("os").environ.get("EDGEQA_SHARED", REPO.parent / "shared"))
TEACHER = SHARED / "models" / "minilm-l6-h384-squad1"
DEV = SHARED / "data" / "squad" / "dev-v1.1.json.gz"
TRAIN = SHARED / "data" / "squad" / "train-v1.1.rebuilt.json.gz"

WORDS = [
    "the",
    "a",
    "an",
    "of",
    "in",
    "on",
    "is",
    "was",
    "who",
    "what",
    "when",
    "where",
    "which",
    "how",
    "many",
    "city",
    "river",
    "capital",
    "france",
    "paris",
    "germany",
    "berlin",
    "built",
    "wrote",
    "book",
    "year",
    "first",
    "largest",
    "population",
    "people",
    "lived",
    "king",
    "queen",
    "war",
    "began",
    "ended",
]


def _wordpiece_vocab() -> list[str]:
    """Enough pieces that any lower-case ASCII text tokenises without [UNK]: whole words, letters, ##letters."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = specials + WORDS + chars + [f"##{c}" for c in string.ascii_lowercase + string.digits]
    return list(dict.fromkeys(pieces))


def make_tiny_qa_model(
    folder: Path,
    *,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    seed: int = 0,
    qa_head: bool = True,
    vocab_size: int | None = None,
) -> Path:
    """Save a random BertForQuestionAnswering with a small WordPiece tokenizer into `folder`."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _wordpiece_vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=vocab_size or len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(config) if qa_head else BertModel(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_qa_model(tmp_path) -> Path:
    return make_tiny_qa_model(tmp_path / "tiny-bert-qa")


def write_squad(path: Path, qas: list[tuple[str, str, list[str]]], version: str = "1.1", gz: bool = False) -> Path:
    """Write a SQuAD-layout file from (context, question, answers) triples; answers [] means unanswerable."""
    paragraphs = []
    for i, (context, question, answers) in enumerate(qas):
        qa = {
            "id": f"q{i}",
            "question": question,
            "answers": [{"text": a, "answer_start": context.find(a)} for a in answers],
        }
        if version.startswith("2"):
            qa["is_impossible"] = not answers
        paragraphs.append({"context": context, "qas": [qa]})
    doc = {"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}
    text = json.dumps(doc)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


TOY_QAS = [
    ("paris is the capital of france. berlin is the capital of germany.", "what is the capital of france?", ["paris"]),
    ("the king lived in the city on the river.", "who lived in the city?", ["the king", "king"]),
    ("the war began in 1914 and ended in 1918.", "when did the war end?", ["1918"]),
]


@pytest.fixture
def toy_squad(tmp_path) -> Path:
    return write_squad(tmp_path / "toy.json", TOY_QAS)


@pytest.fixture(scope="session")
def teacher() -> Path:
    """The shared SQuAD teacher; its absence is a broken checkout, so it fails rather than skips."""
    assert (TEACHER / "config.json").exists(), f"shared teacher missing at {TEACHER} (set EDGEQA_SHARED)"
    assert DEV.exists(), f"shared SQuAD dev set missing at {DEV}"
    return TEACHER
