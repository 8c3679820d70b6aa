"""Shared fixtures: one factory for tiny random QA models, and the paths of the shared teacher and data."""

from __future__ import annotations

import gzip
import json
import os
import signal
import string
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

if os.environ.get("EDGEQA_MUTANTS_PRELOAD"):  # scripts/mutants/parts.py: mutmut's fork server imports these once,
    # instead of each mutant's process (transformers' model classes alone take 3 s here).
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    from transformers import AutoModelForQuestionAnswering  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEQA_SHARED", REPO.parent / "shared"))
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


# The families _tokenizer and _config below make tiny models of: every family the table says edgeqa fuses.
FAMILIES = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra", "albert", "mobilebert")
CORPUS = [
    "paris is the capital of france. berlin is the capital of germany.",
    "the king lived in the city on the river. the war began in 1914 and ended in 1918.",
    "who wrote the book? what is the largest city? how many people lived there?",
]


def _tokenizer(family: str, folder: Path):
    """A small fast tokenizer of the family's kind: WordPiece, byte-level BPE (RoBERTa) or Unigram (ALBERT)."""
    import transformers as tf
    from tokenizers import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer, processors

    if family == "roberta":
        bpe = ByteLevelBPETokenizer()
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        bpe.train_from_iterator(CORPUS * 5, vocab_size=400, min_frequency=1, special_tokens=specials)
        bpe.save_model(str(folder))
        return tf.RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    if family in ("xlm-roberta", "camembert"):  # SentencePiece Unigram with RoBERTa's <s> A </s></s> B </s>
        unigram = SentencePieceUnigramTokenizer()
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        unigram.train_from_iterator(CORPUS * 5, vocab_size=120, special_tokens=specials, unk_token="<unk>")
        ids = [(t, unigram.token_to_id(t)) for t in ("<s>", "</s>")]
        unigram._tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=ids
        )
        cls = tf.CamembertTokenizerFast if family == "camembert" else tf.XLMRobertaTokenizerFast
        return cls(tokenizer_object=unigram._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")  # fmt: skip
    if family == "albert":
        unigram = SentencePieceUnigramTokenizer()
        specials = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
        unigram.train_from_iterator(CORPUS * 5, vocab_size=120, special_tokens=specials, unk_token="<unk>")
        unigram._tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", unigram.token_to_id("[CLS]")), ("[SEP]", unigram.token_to_id("[SEP]"))],
        )
        return tf.AlbertTokenizerFast(
            tokenizer_object=unigram._tokenizer,
            unk_token="<unk>",
            pad_token="<pad>",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    (folder / "vocab.txt").write_text("\n".join(_wordpiece_vocab()) + "\n")
    cls = {
        "distilbert": tf.DistilBertTokenizerFast,
        "electra": tf.ElectraTokenizerFast,
        "mobilebert": tf.MobileBertTokenizerFast,
    }.get(family, tf.BertTokenizerFast)
    return cls(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)


def _config(family: str, vocab: int, layers: int, hidden: int, heads: int):
    import transformers as tf

    common = {"vocab_size": vocab, "max_position_embeddings": 512}
    if family == "distilbert":
        return tf.DistilBertConfig(n_layers=layers, dim=hidden, n_heads=heads, hidden_dim=hidden * 4, **common)
    if family in ("roberta", "xlm-roberta", "camembert"):
        return {"xlm-roberta": tf.XLMRobertaConfig, "camembert": tf.CamembertConfig}.get(family, tf.RobertaConfig)(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=hidden * 4,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            vocab_size=vocab,
            max_position_embeddings=514,
            type_vocab_size=1,
        )
    if family == "electra":
        return tf.ElectraConfig(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=hidden * 4,
            embedding_size=hidden // 2,
            **common,
        )
    if family == "albert":
        return tf.AlbertConfig(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=hidden * 4,
            embedding_size=hidden // 2,
            pad_token_id=0,
            **common,
        )
    if family == "mobilebert":
        return tf.MobileBertConfig(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=hidden,
            embedding_size=hidden // 2,
            intra_bottleneck_size=hidden,
            true_hidden_size=hidden,
            num_feedforward_networks=1,
            **common,
        )
    return tf.BertConfig(
        num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=hidden * 4, **common
    )


def make_tiny_qa_model(
    folder: Path,
    *,
    family: str = "bert",
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    seed: int = 0,
    qa_head: bool = True,
    vocab_size: int | None = None,
    intermediate: int | None = None,
    dropout: float | None = None,
) -> Path:
    """Save a random *ForQuestionAnswering of `family` with a small fast tokenizer of its kind into `folder`."""
    import torch
    from transformers import AutoModel, AutoModelForQuestionAnswering

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(family, folder)
    tokenizer.save_pretrained(folder)
    config = _config(family, vocab_size or len(tokenizer), layers, hidden, heads)
    if intermediate is not None:
        config.intermediate_size = intermediate
    if dropout is not None:  # data-parallel comparisons need the same computation in every process
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    torch.manual_seed(seed)
    model = AutoModelForQuestionAnswering.from_config(config) if qa_head else AutoModel.from_config(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_qa_model(tmp_path) -> Path:
    return make_tiny_qa_model(tmp_path / "tiny-bert-qa")


@pytest.fixture
def tiny(tmp_path):
    """A tiny BERT QA model loaded in PyTorch, without dropout: what the in-process pruning tests prune."""
    from edgeqa.bench.engines import load_torch_qa_model

    return load_torch_qa_model(make_tiny_qa_model(tmp_path / "m", layers=2, hidden=32, heads=4, dropout=0.0))


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


@pytest.fixture
def toy_train(tmp_path) -> Path:
    """48 answered questions, one window each at 384 tokens: 6 training batches of 8 (files that train on other
    windows define their own)."""
    return write_squad(tmp_path / "train.json", TOY_QAS * 16)


@pytest.fixture
def trainset(tmp_path):
    """32 labelled windows of 24 tokens (stride 4) for a tiny BERT: what the pruning tests read windows from."""
    from edgeqa.bench.engines import load_tokenizer
    from edgeqa.bench.qa import QAConfig
    from edgeqa.compress.trainset import load_trainset

    tok = load_tokenizer(make_tiny_qa_model(tmp_path / "tok"))
    data = write_squad(tmp_path / "t.json", TOY_QAS * 8)
    return load_trainset(data, None, tok, QAConfig(max_length=24, doc_stride=4))


@pytest.fixture(scope="session")
def teacher() -> Path:
    """The shared SQuAD teacher; its absence is a broken checkout, so it fails rather than skips."""
    assert (TEACHER / "config.json").exists(), f"shared teacher missing at {TEACHER} (set EDGEQA_SHARED)"
    assert DEV.exists(), f"shared SQuAD dev set missing at {DEV}"
    return TEACHER


# --- real kills --------------------------------------------------------------------------------------------------


def edgeqa_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeqa.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def run_to_end(argv: list[str], log: Path, cwd: Path) -> str:
    """Run a command to its end; return what it printed (stdout and stderr)."""
    with open(log, "w") as out:
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=_env()).returncode
    assert code == 0, log.read_text()[-3000:]
    return log.read_text()


def kill_when_written(argv: list[str], marker: Path, log: Path, cwd: Path, timeout: float = 600) -> None:
    """Start a command and SIGKILL it the moment `marker` exists: a real kill of a real process, at a point chosen by
    what the command wrote, not by time. Fails when the command ends before it could be killed."""
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=_env())
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if proc.poll() is not None:
                tail = log.read_text()[-3000:]
                raise AssertionError(f"ended ({proc.returncode}) before {marker} was written: {tail}")
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{marker} not written within {timeout} s")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def tiny_onnx_model(tmp_path_factory) -> tuple[Path, Path]:
    """(PyTorch folder, its ONNX export) of one tiny random BERT, for the runtime tests that need no torch."""
    from edgeqa.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("tiny-onnx")
    torch_dir = make_tiny_qa_model(root / "torch")
    return torch_dir, export_onnx(torch_dir, root / "onnx")


@pytest.fixture(scope="module")
def onnx_dir(tiny_onnx_model) -> Path:
    """The ONNX export of `tiny_onnx_model`, for tests that fuse or quantize it."""
    return tiny_onnx_model[1]


def write_recipe(path: Path, model: Path, data: Path, steps: str, name: str = "t", extra: str = "") -> Path:
    """A recipe for a tiny model: scored on `data`, parity on 3 questions, timed briefly at 32 tokens. `steps` is
    the list of steps (any indentation); `extra` more top-level sections."""
    head = (
        f"name: {name}\nmodel: {model}\neval: {{data: {data}, batch_size: 4}}\nparity: {{limit: 3}}\n"
        f"bench: {{threads: 1, batch_sizes: [1], seq_lens: [32], warmup: 1, repeats: 3}}\n{extra}"
    )
    path.write_text(head + "steps:\n" + textwrap.indent(textwrap.dedent(steps), "  "))
    return path
