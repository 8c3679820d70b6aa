"""The ONNX runtime without torch or transformers: the same windows as transformers cuts, the same answers as the
PyTorch environment, and a clear error when a command needs a library that is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from conftest import REPO, TOY_QAS, make_tiny_qa_model, write_squad
from edgeqa.bench.engines import load_qa_model, predict
from edgeqa.bench.qa import QAConfig, tokenize
from edgeqa.bench.squad import load_squad
from edgeqa.bench.tokenizer import load_qa_tokenizer

# Runs edgeqa's main() with the optional libraries impossible to import, as on a box that never installed them.
BLOCKED_RUN = """
import sys
BLOCKED = {"torch", "transformers", "onnx", "matplotlib", "optimum"}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
from edgeqa.cli import main
code = main(sys.argv[1:])
assert not BLOCKED & set(sys.modules), "imported"
sys.exit(code)
"""

ACCENTED = "Le Café MÜLLER à Zürich servait des crêpes NAÏVES; 北京 est loin. Señor Ångström [SEP] était là."
LONG = " ".join(
    f"In {1900 + i} the king of {w} built {i} bridges over the river, and the queen wrote a book." for i, w in
    enumerate(["France", "Germany", "Spain", "Italy", "Poland"] * 12)
)  # fmt: skip
QUESTIONS = ["   what did the king build?", "Où était le Señor ÅNGSTRÖM?", "when was the first bridge built?"]
CONTEXTS = [LONG, ACCENTED, LONG[:700] + " " + ACCENTED]


def _transformers_windows(tok, questions, contexts, cfg: QAConfig) -> dict:
    """Windows exactly as transformers' tokenizer call cuts them: the reference the runtime must reproduce."""
    question_first = tok.padding_side == "right"
    questions = [q.lstrip() for q in questions]
    pair = (questions, contexts) if question_first else (contexts, questions)
    enc = tok(
        *pair,
        truncation="only_second" if question_first else "only_first",
        max_length=cfg.max_length,
        stride=cfg.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    context_seq = 1 if question_first else 0
    offsets = [
        [tuple(span) if s == context_seq else None for s, span in zip(enc.sequence_ids(i), spans, strict=True)]
        for i, spans in enumerate(enc["offset_mapping"])
    ]
    return {
        "input_ids": enc["input_ids"],
        "token_type_ids": enc.get("token_type_ids"),
        "example_index": list(enc["overflow_to_sample_mapping"]),
        "offsets": offsets,
        "cls_index": [ids.index(tok.cls_token_id) for ids in enc["input_ids"]],
    }


def _runtime_windows(folder: Path, questions, contexts, cfg: QAConfig) -> dict:
    f = tokenize(load_qa_tokenizer(folder), questions, contexts, cfg)
    offsets = [
        [tuple(int(x) for x in f.offsets[i, t]) if f.offsets[i, t, 0] >= 0 else None for t in range(len(ids))]
        for i, ids in enumerate(f.input_ids)
    ]
    return {
        "input_ids": [list(ids) for ids in f.input_ids],
        "token_type_ids": None if f.token_type_ids is None else [list(t) for t in f.token_type_ids],
        "example_index": f.example_index.tolist(),
        "offsets": offsets,
        "cls_index": f.cls_index.tolist(),
    }


def _variant(src: Path, dst: Path, settings: dict, keep_tokenizer_json: bool) -> Path:
    """A copy of a tokenizer folder with some tokenizer_config.json settings changed."""
    dst.mkdir()
    for name in ("vocab.txt", "special_tokens_map.json", *(["tokenizer.json"] if keep_tokenizer_json else [])):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    config = json.loads((src / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**config, **settings}))
    return dst


TEACHER_VARIANTS = {
    "as-is": {},
    "cased": {"do_lower_case": False},
    "cased-no-accents": {"do_lower_case": False, "strip_accents": True},
    "no-chinese-split": {"tokenize_chinese_chars": False},
    "context-first": {"padding_side": "left"},
    "distilbert": {"tokenizer_class": "DistilBertTokenizer"},  # no token_type_ids
}


@pytest.mark.integration
@pytest.mark.parametrize("variant", TEACHER_VARIANTS)
def test_windows_match_transformers_on_the_teacher_vocab(teacher, tmp_path, variant):
    """The teacher has only vocab.txt: the runtime builds BERT's pipeline itself, for each tokenizer setting."""
    folder = _variant(teacher, tmp_path / variant, TEACHER_VARIANTS[variant], keep_tokenizer_json=False)
    for cfg in (QAConfig(), QAConfig(max_length=64, doc_stride=16)):
        want = _transformers_windows(AutoTokenizer.from_pretrained(folder), QUESTIONS, CONTEXTS, cfg)
        got = _runtime_windows(folder, QUESTIONS, CONTEXTS, cfg)
        assert got == want
    assert len(set(want["example_index"])) == 3 and len(want["example_index"]) > 6  # long contexts overflowed


@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.txt", "tokenizer.json+cased-config", "roberta"])
def test_windows_match_transformers_on_a_tiny_tokenizer(tiny_qa_model, tmp_path, source):
    """BERT's WordPiece from either file, and byte-level BPE, where a question's leading space would be a token."""
    model = make_tiny_qa_model(tmp_path / "roberta", family="roberta") if source == "roberta" else tiny_qa_model
    settings = {"do_lower_case": False} if "cased" in source else {}
    folder = _variant(model, tmp_path / "tok", settings, keep_tokenizer_json=source != "vocab.txt")
    cfg = QAConfig(max_length=64, doc_stride=16)
    want = _transformers_windows(AutoTokenizer.from_pretrained(folder), QUESTIONS, CONTEXTS, cfg)
    assert _runtime_windows(folder, QUESTIONS, CONTEXTS, cfg) == want
    assert len(want["example_index"]) > 20


def test_a_question_too_long_for_the_windows_is_refused(tiny_qa_model):
    from edgeqa.bench.files import EdgeQAError

    tok = load_qa_tokenizer(tiny_qa_model)
    question = "who was the king of the city on the river in the year the war began?"  # 17 tokens, 3 special ones
    with pytest.raises(EdgeQAError, match=r"the question 'who was .* is 17 tokens: too long .* max_length=28"):
        tokenize(tok, ["who?", question], [LONG, LONG], QAConfig(max_length=28, doc_stride=8))
    assert len(tokenize(tok, [question], [LONG], QAConfig(max_length=29, doc_stride=8))) > 1  # 17 + 3 + 8 < 29


def test_bad_tokenizer_files_name_the_file(tmp_path):
    from edgeqa.bench.files import EdgeQAError

    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(EdgeQAError, match=r"tokenizer\.json: not a tokenizers file"):
        load_qa_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(EdgeQAError, match=r"tokenizer_config\.json: tokenizer settings should be a JSON object"):
        load_qa_tokenizer(tmp_path)


def _blocked(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env_path = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, *args], capture_output=True, text=True, cwd=cwd, env=env_path, timeout=120
    )


def test_onnx_commands_run_without_torch_and_answer_as_pytorch_does(tiny_onnx_model, tmp_path):
    """answer, eval, score and bench on an ONNX model with torch and transformers blocked: the answers are the
    PyTorch model's, computed here with both installed."""
    torch_dir, onnx_dir = tiny_onnx_model
    data = write_squad(tmp_path / "toy.json", TOY_QAS)
    examples = load_squad(data).examples
    torch_model = load_qa_model(torch_dir, 1)
    assert torch_model.engine.backend == "torch"
    expected = {e.id: a for e, a in zip(examples, torch_model.answer(examples, progress=False).values(), strict=True)}

    for ex in examples:
        run = _blocked("answer", "--model", str(onnx_dir), "--question", ex.question, "--context", ex.context,
                       "--json", "--threads", "1", cwd=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stderr
        got = json.loads(run.stdout.strip().splitlines()[-1])
        want = expected[ex.id]
        assert (got["answer"], got["start"], got["end"]) == (want.text, want.start_char, want.end_char)
        assert got["score"] == pytest.approx(want.score, abs=1e-3)

    run = _blocked("eval", "--model", str(onnx_dir), "--data", str(data), "--out", "ev", "--threads", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    predictions = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    assert predictions == predict(torch_model, examples, progress=False)

    run = _blocked("score", str(data), str(tmp_path / "ev" / "predictions.json"), "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    scored, evaluated = (
        json.loads(run.stdout.splitlines()[-1]),
        json.loads((tmp_path / "ev" / "metrics.json").read_text()),
    )
    assert (scored["exact_match"], scored["f1"], scored["total"]) == (evaluated["exact_match"], evaluated["f1"], 3)

    run = _blocked("bench", "--model", str(onnx_dir), "--seq-lens", "32", "--warmup", "0", "--repeats", "3",
                   "--threads", "1", "--json", "--data", str(data), "--questions", "2", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    bench = json.loads(run.stdout.splitlines()[-1])
    assert bench["backend"] == "onnxruntime" and np.isfinite(bench["latency"][0]["p50_ms"])
    # per real question too: 2 of the 3 toy questions, one window each at 384 tokens, timed end to end
    q = bench["questions"]
    assert (q["questions"], q["windows"], q["runs"]) == (2, 2, 2) and np.isfinite(q["p50_ms"])
    assert "samples_ms" not in q and "per question (2 questions, 2 windows" in run.stdout


@pytest.mark.parametrize(
    ("args", "module"),
    [
        (["answer", "--question", "who?", "--context", "the king lived in the city."], "transformers"),
        (["export", "out", "--parity-limit", "0"], "torch"),
    ],
)
def test_missing_optional_dependency_is_one_clear_line(tmp_path, args, module):
    """A PyTorch folder on a runtime-only install: the command, the module and the extra that installs it."""
    folder = make_tiny_qa_model(tmp_path / "torch")
    run = _blocked(args[0], "--model", str(folder), *args[1:], cwd=tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines == [
        f"edgeqa: error: {args[0]} needs {module}, which is not installed; pip install 'edgeqa[full]' installs it"
    ]
