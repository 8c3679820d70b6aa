"""QA tokenizers from a model folder without transformers: tokenizer.json as it is, or a BERT WordPiece pipeline
rebuilt from vocab.txt with the folder's settings, exactly as transformers would build it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from edgeqa.bench.families import family
from edgeqa.bench.files import EdgeQAError, read_json


@dataclass
class QATokenizer:
    """A `tokenizers.Tokenizer` plus the few transformers settings QA windows depend on.

    Built from a model folder without transformers (`load_qa_tokenizer`) or wrapped around a transformers fast
    tokenizer (`as_qa_tokenizer`), so that both runtimes cut windows in the one place, `tokenize`.
    """

    backend: Tokenizer
    cls_token: str | None = None
    pad_token: str | None = None
    question_first: bool = True  # transformers' padding_side "right": [CLS] question [SEP] context [SEP]
    truncation_side: str = "right"
    type_ids: bool = True  # whether transformers' class returns token_type_ids (DistilBERT, RoBERTa: no)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def cls_token_id(self) -> int | None:
        return self.backend.token_to_id(self.cls_token) if self.cls_token else None

    @property
    def pad_token_id(self) -> int | None:
        return self.backend.token_to_id(self.pad_token) if self.pad_token else None


def as_qa_tokenizer(tokenizer) -> QATokenizer:
    """A QATokenizer for ours or a transformers fast tokenizer (sharing its Rust backend, which transformers
    reconfigures before each of its own calls, as `tokenize` does)."""
    if isinstance(tokenizer, QATokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False):
        raise EdgeQAError("QA needs a fast (Rust) tokenizer for character offsets; this model folder has a slow one")
    return QATokenizer(
        backend,
        cls_token=tokenizer.cls_token,
        pad_token=tokenizer.pad_token,
        question_first=tokenizer.padding_side == "right",
        truncation_side=tokenizer.truncation_side,
        type_ids="token_type_ids" in tokenizer.model_input_names,
    )


TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
# transformers' SPECIAL_TOKENS_ATTRIBUTES order, which is the order it adds missing special tokens in.
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
BERT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                 "mask_token": "[MASK]"}  # fmt: skip


def _settings(folder: Path, name: str) -> dict:
    """A tokenizer settings file of the folder as a dict; {} when absent."""
    path = folder / name
    settings = read_json(path, "tokenizer settings file") if path.exists() else {}
    if not isinstance(settings, dict):
        raise EdgeQAError(f"{path}: tokenizer settings should be a JSON object")
    return settings


def load_qa_tokenizer(folder: Path) -> QATokenizer:
    """The folder's tokenizer as transformers' AutoTokenizer would build it, with `tokenizers` alone: tokenizer.json
    when there is one, else BERT's WordPiece pipeline from vocab.txt (transformers converts the rest)."""
    folder = Path(folder)
    opts = {**_settings(folder, "tokenizer_config.json"), **_settings(folder, "special_tokens_map.json")}
    kind = family(str(opts.get("tokenizer_class") or _settings(folder, "config.json").get("model_type", "")))
    if (folder / TOKENIZER_FILE).exists():
        try:
            backend = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except Exception as e:  # the Rust loader raises plain exceptions
            raise EdgeQAError(f"{folder / TOKENIZER_FILE}: not a tokenizers file: {e}") from e
    elif (folder / VOCAB_FILE).exists() and kind is not None and kind.wordpiece:
        opts = {**BERT_SPECIALS, **opts}
        backend = _wordpiece(folder / VOCAB_FILE, opts)
    else:
        return _converted_by_transformers(folder)
    _bert_normalizer_options(backend, opts)
    _add_special_tokens(backend, opts)
    return QATokenizer(
        backend,
        cls_token=_token_text(opts.get("cls_token")),
        pad_token=_token_text(opts.get("pad_token")),
        question_first=opts.get("padding_side", "right") == "right",
        truncation_side=opts.get("truncation_side", "right"),
        type_ids="token_type_ids" in opts.get("model_input_names", ["token_type_ids"])
        and (kind is None or kind.type_ids),
    )


def _token_text(token) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


def _wordpiece(vocab_file: Path, opts: dict) -> Tokenizer:
    """transformers' BertConverter: BERT's normaliser and pre-tokeniser, WordPiece, [CLS] A [SEP] B [SEP]."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    try:  # read as transformers' load_vocab does: one token a line, the last of duplicates wins
        with open(vocab_file, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeQAError(f"{vocab_file}: unreadable vocabulary: {e}") from e
    vocab = {line.rstrip("\n"): i for i, line in enumerate(lines)}
    unk, cls, sep = (_token_text(opts[k]) for k in ("unk_token", "cls_token", "sep_token"))
    missing = [t for t in (unk, cls, sep) if t not in vocab]
    if missing:
        raise EdgeQAError(f"{vocab_file}: the special tokens {missing} are not in the vocabulary")
    backend = Tokenizer(models.WordPiece(vocab, unk_token=unk))
    backend.normalizer = normalizers.BertNormalizer()  # set from the options by `_bert_normalizer_options`
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _bert_normalizer_options(backend: Tokenizer, opts: dict) -> None:
    """BERT-family fast tokenizers override tokenizer.json's normaliser with tokenizer_config's case, accent and
    Chinese-character settings (their defaults: lower case, accents follow case, split Chinese characters)."""
    from tokenizers import normalizers

    state = json.loads(backend.normalizer.__getstate__()) if backend.normalizer is not None else {}
    if state.get("type") != "BertNormalizer":
        return
    wanted = {
        "lowercase": opts.get("do_lower_case", True),
        "strip_accents": opts.get("strip_accents"),
        "handle_chinese_chars": opts.get("tokenize_chinese_chars", True),
    }
    if any(state.get(k, v) != v for k, v in wanted.items()):
        state.pop("type")
        backend.normalizer = normalizers.BertNormalizer(**{**state, **wanted})


def _add_special_tokens(backend: Tokenizer, opts: dict) -> None:
    """Add the config's added and special tokens the backend lacks, in transformers' order and with its flags, so
    that e.g. "[SEP]" written in a context is one token, as it is for transformers."""
    from tokenizers import AddedToken

    flags = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
    decoder = opts.get("added_tokens_decoder") or {}
    wanted = [decoder[k] for k in sorted(decoder, key=int)] + [opts[k] for k in SPECIAL_TOKENS if opts.get(k)]
    present = {t.content for t in backend.get_added_tokens_decoder().values()}
    specials = {_token_text(opts[k]) for k in SPECIAL_TOKENS if opts.get(k)}
    for token in wanted:
        text = _token_text(token)
        if text in present:
            continue
        present.add(text)
        kwargs = {k: v for k, v in token.items() if k in flags} if isinstance(token, dict) else {"content": text}
        kwargs["special"] = kwargs.get("special", False) or text in specials
        backend.add_tokens([AddedToken(**kwargs)])


def _converted_by_transformers(folder: Path) -> QATokenizer:
    try:
        from edgeqa.bench.engines import load_tokenizer

        return as_qa_tokenizer(load_tokenizer(folder))
    except ModuleNotFoundError as e:
        raise EdgeQAError(
            f"{folder}: no {TOKENIZER_FILE} (nor a BERT {VOCAB_FILE}); converting its tokenizer needs {e.name}, "
            "which `pip install 'edgeqa[full]'` installs"
        ) from e
