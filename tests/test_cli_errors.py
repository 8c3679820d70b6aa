"""Every argument's bad values: one `edgeqa: error:` line naming the problem, exit status 2, no traceback, and
nothing written. One table for every subcommand; `{model}` is a tiny PyTorch QA folder, `{onnx}` a folder without
model files, `{data}` a toy SQuAD file, `{recipe}` a valid recipe, `{tmp}` the test's folder."""

from __future__ import annotations

import shutil

import pytest

from conftest import make_tiny_qa_model, write_recipe, write_squad
from edgeqa.cli import main

M = ["--model", "{model}"]
EVAL = ["eval", *M, "--data", "{data}"]
ANSWER = ["answer", *M, "--question", "who?", "--context", "Ann did."]
EXPORT = ["export", *M, "{tmp}/out"]
QUANTIZE = ["quantize", "--model", "{onnx}", "{tmp}/out"]
BENCH = ["bench", *M]
REPORT = ["report", "--variant", "a={model}", "--data", "{data}", "--out", "{tmp}/out"]
NOT_A_NUMBER = "expected a whole number, got 'x'"

CASES = [
    # Wrong command or missing arguments.
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["eval"], "required: --model"),
    (["score", "{data}"], "required: predictions"),
    (["answer", *M, "--question", "who?"], "required: --context"),
    (["answer", *M, "--question", " ", "--context", "Ann did."], "must not be empty"),
    # score: files that are missing, folders, or not what they claim to be.
    (["score", "{tmp}/absent.json", "{data}"], "absent.json: no such SQuAD file"),
    (["score", "{tmp}", "{data}"], "is a folder"),
    (["score", "{data}", "{tmp}/absent.json"], "absent.json"),
    (["score", "{data}", "{data}"], "not a predictions file"),
    # eval: every number, every path.
    *[
        ([*EVAL, flag, value], message)
        for flag in ("--limit", "--batch-size", "--max-length", "--n-best", "--max-answer-length", "--threads")
        for value, message in (("0", "must be at least 1, got 0"), ("-3", "at least 1"), ("x", NOT_A_NUMBER))
    ],
    ([*EVAL, "--doc-stride", "-1"], "must be at least 0, got -1"),
    ([*EVAL, "--doc-stride", "x"], NOT_A_NUMBER),
    ([*EVAL, "--max-length", "8"], "max_length must be at least 16"),
    ([*EVAL, "--doc-stride", "300"], "doc_stride must be in"),
    (["eval", "--model", "{tmp}/absent", "--data", "{data}"], "no such model file or folder"),
    (["eval", "--model", "{data}", "--data", "{data}"], "expected a model folder"),
    (["eval", "--model", "{onnx}", "--data", "{data}"], "not a model folder"),
    (["eval", *M, "--data", "{tmp}/absent.json"], "absent.json"),
    (["eval", *M, "--data", "{tmp}"], "is a folder"),
    ([*EVAL, "--out", "{data}"], "not a folder"),
    ([*EVAL, "--out", "{data}/below"], "cannot create output folder"),
    # answer
    *[([*ANSWER, flag, "0"], "must be at least 1") for flag in ("--max-length", "--n-best", "--threads")],
    (["answer", "--model", "{tmp}/absent", "--question", "who?", "--context", "Ann did."], "no such model"),
    # export
    ([*EXPORT, "--opset", "7"], "must be at least 14, got 7"),
    ([*EXPORT, "--opset", "x"], NOT_A_NUMBER),
    ([*EXPORT, "--parity-limit", "-1"], "must be at least 0"),
    ([*EXPORT, "--parity-limit", "x"], NOT_A_NUMBER),
    ([*EXPORT, "--parity-data", "{tmp}/absent.json"], "absent.json"),
    (["export", "--model", "{tmp}/absent", "{tmp}/out"], "absent"),
    (["export", "--model", "{data}", "{tmp}/out"], "expected a transformers model folder, got a file"),
    (["export", *M, "{data}/below"], "below"),
    # quantize
    ([*QUANTIZE, "--preset", "avx9000"], "invalid choice: 'avx9000'"),
    ([*QUANTIZE, "--mode", "sometimes"], "invalid choice: 'sometimes'"),
    ([*QUANTIZE, "--calibration-method", "guess"], "invalid choice: 'guess'"),
    ([*QUANTIZE, "--mode", "static"], "static quantization needs calibration data (a SQuAD file)"),
    ([*QUANTIZE, "--calibration-samples", "0"], "must be at least 1"),
    ([*QUANTIZE, "--parity-limit", "-2"], "must be at least 0"),
    (["quantize", "--model", "{tmp}/absent", "{tmp}/out"], "absent"),
    (["quantize", *M, "{tmp}/out"], "needs an ONNX model; export it first"),
    # bench
    *[
        ([*BENCH, flag, value], message)
        for flag in ("--batch-sizes", "--seq-lens", "--repeats", "--threads", "--rounds")
        for value, message in (("0", "must be at least 1"), ("x", NOT_A_NUMBER))
    ],
    ([*BENCH, "--warmup", "-1"], "must be at least 0"),
    (["bench", "--model", "{tmp}/absent"], "no such model"),
    # report
    (["report", "--variant", "no-equals-sign", "--out", "{tmp}/out"], "--variant takes NAME=PATH"),
    ([*REPORT, "--limit", "0"], "must be at least 1"),
    ([*REPORT, "--batch-size", "-1"], "must be at least 1"),
    ([*REPORT, "--rounds", "x"], NOT_A_NUMBER),
    (["report", "--variant", "a={tmp}/absent", "--data", "{data}", "--out", "{tmp}/out"], "no such model"),
    (["report", "--variant", "a={model}", "--data", "{data}", "--out", "{data}/below"], "cannot create"),
    # run, distill, prune: the recipe file.
    *[
        ([command, recipe], message)
        for command in ("run", "distill", "prune")
        for recipe, message in (
            ("{tmp}/absent.yaml", "absent.yaml: no such recipe file"),
            ("{tmp}", "is a folder, not a recipe file"),
            ("{data}", "recipe"),
        )
    ],
    (["run", "{recipe}", "--out", "{data}/below"], "cannot create"),
    (["distill", "{recipe}"], "the recipe has no distill step"),
    (["prune", "{recipe}"], "the recipe has no prune step"),
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    model = make_tiny_qa_model(root / "model")
    data = write_squad(root / "toy.json", [("Ann wrote the book.", "Who wrote the book?", ["Ann"])])
    (root / "onnx").mkdir()  # a folder with no model in it
    recipe = root / "recipe.yaml"
    recipe.write_text(f"name: r\nmodel: {model}\neval: {{data: {data}}}\nsteps:\n  - export: {{name: onnx}}\n")
    return {"model": model, "data": data, "onnx": root / "onnx", "recipe": recipe}


def _listing(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a)[:80] for a, _ in CASES])
def test_a_bad_argument_is_one_error_line_exit_2_and_nothing_written(args, message, assets, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, **assets) for a in args]
    before = {"tmp": _listing(tmp_path), "assets": _listing(assets["data"].parent)}
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("edgeqa: error:")]
    assert len(errors) == 1, err
    assert message in errors[0]
    assert {"tmp": _listing(tmp_path), "assets": _listing(assets["data"].parent)} == before


# --- models that fail only once loaded: nothing the command made is left ----------------------------------------


@pytest.fixture(scope="module")
def broken(tiny_onnx_model, tmp_path_factory):
    """A good ONNX folder, and a copy whose model.onnx is cut in half (tokenizer and config intact)."""
    good = tiny_onnx_model[1]
    folder = tmp_path_factory.mktemp("broken") / "onnx"
    shutil.copytree(good, folder)
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    return {"good": good, "broken": folder / "model.onnx"}


GOOD_THEN_BROKEN = ["--variant", "good={good}", "--variant", "bad={broken}"]
BROKEN_CASES = {
    "eval, new --out": ["eval", "--model", "{broken}", "--data", "{data}", "--out", "{tmp}/out"],
    "eval, nested new --out": ["eval", "--model", "{broken}", "--data", "{data}", "--out", "{tmp}/a/b/out"],
    "eval, existing --out": ["eval", "--model", "{broken}", "--data", "{data}", "--out", "{tmp}/kept"],
    "report, new --out": ["report", "--variant", "a={broken}", "--data", "{data}", "--out", "{tmp}/out"],
    "report, existing --out": ["report", "--variant", "a={broken}", "--data", "{data}", "--out", "{tmp}/kept"],
    # the good model is scored (eval/good written) before the broken one fails: its scores go too
    "report, a good model first": ["report", *GOOD_THEN_BROKEN, "--data", "{data}", "--out", "{tmp}/kept"],
}


@pytest.mark.parametrize("args", BROKEN_CASES.values(), ids=BROKEN_CASES.keys())
def test_a_model_that_cannot_be_loaded_leaves_nothing_behind(args, assets, broken, tmp_path, capsys):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    argv = [a.format(tmp=tmp_path, data=assets["data"], **broken) for a in args]
    before = _listing(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("edgeqa: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"edgeqa: error: {broken['broken']}: ONNX Runtime cannot load this model")
    assert _listing(tmp_path) == before
    assert (tmp_path / "kept" / "notes.txt").read_text() == "mine"


def test_an_int8_model_is_not_quantized_again_from_the_command_line(tiny_onnx_model, tmp_path, capsys):
    int8 = tmp_path / "int8"
    assert main(["quantize", "--model", str(tiny_onnx_model[1]), str(int8), "--parity-limit", "0"]) == 0
    capsys.readouterr()
    before = _listing(tmp_path)
    code = main(["quantize", "--model", str(int8), str(tmp_path / "again"), "--parity-limit", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"edgeqa: error: {int8 / 'model.onnx'}: is already int8 ({int8 / 'quantization.json'} records its "
        "quantization); quantize the float model it was made from"
    ]
    assert _listing(tmp_path) == before


def test_a_recipe_that_quantizes_an_int8_model_is_refused(assets, tmp_path, capsys):
    steps = "- export: {name: onnx}\n- quantize: {name: int8, from: onnx}\n- quantize: {name: again, from: int8}\n"
    recipe = write_recipe(tmp_path / "r.yaml", assets["model"], assets["data"], steps, name="r")
    code = main(["run", str(recipe), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("edgeqa: error:")]
    assert code == 2 and len(errors) == 1, err
    int8 = tmp_path / "runs" / "r" / "models" / "int8"
    assert f"{int8 / 'model.onnx'}: is already int8" in errors[0]
    assert (int8 / "model.onnx").exists() and not (tmp_path / "runs" / "r" / "models" / "again").exists()
    assert not list((tmp_path / "runs" / "r" / "models").glob(".*"))  # no temporary folder either
