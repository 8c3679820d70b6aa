"""What `--help` tells the user of the tools run by hand (the Optimum comparison, the GPU check, the step timer, the
emulation checks): the tool's one-paragraph description, not the rest of its module text, and what each option is
for, word for word."""

from __future__ import annotations

import importlib
import re

import pytest

from edgeqa.bench import compare_optimum
from edgeqa.compress import gpu_check, step_time


def _help(main, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines to the terminal's width


def _says(text: str, *entries: str) -> None:
    """Each entry ("--option METAVAR its help") whole: followed by the next option or the end of the help."""
    for entry in entries:
        assert re.search(rf"(^| ){re.escape(entry)}( -|$)", text), entry


def test_the_optimum_comparisons_help(capsys):
    text = _help(compare_optimum.main, [], capsys)
    description = ("Side-by-side benchmark: edgeqa's int8 model against what a user gets from Hugging Face Optimum's "
                   "own path.")  # fmt: skip
    assert f"] {description} options:" in text
    _says(text, "--ours OURS edgeqa int8 model folder", "--limit LIMIT first N dev questions (default: all)",
          "--rounds ROUNDS alternating passes; repeats are split among them",
          "--preset {auto,arm64,avx2,avx512,avx512_vnni} Optimum's quantization preset (default auto: the one for "
          "this CPU)")  # fmt: skip


def test_the_gpu_checks_help(capsys):
    text = _help(gpu_check.main, [], capsys)
    description = ("GPU check: train the distill-3l-gpu student for a few hundred steps on one GPU and score it there, "
                   "inside one 15-minute device lease (start-up included), to show the GPU training path runs and "
                   "what it costs.")  # fmt: skip
    assert f"... {description} positional arguments:" in text
    assert ("prepare here: write the folder that travels (teacher in fp16, SQuAD files) run there: train and score "
            "on the GPU, write gpu_check.json options:") in text  # fmt: skip
    run = _help(gpu_check.main, ["run"], capsys)
    _says(run, "--folder FOLDER what `prepare` wrote", "--out OUT result folder (default: $OUT)",
          "--steps STEPS [STEPS ...] steps of each stage", "--limit LIMIT first N train questions",
          "--allow-cpu run without CUDA (to test this script)",
          "--recipe RECIPE the recipe whose distill step is trained")  # fmt: skip


def test_the_step_timers_help(capsys):
    text = _help(step_time.main, [], capsys)
    description = ("Time one recovery/distillation step at each dropout setting, side by side, with the training "
                   "loop's own step.")  # fmt: skip
    assert f"[--profile] {description} options:" in text
    _says(text, "--model MODEL a QA model folder", "--data DATA a SQuAD training file",
          "--sparsity SPARSITY global magnitude masks, as in recovery",
          "--steps STEPS timed steps per setting per round",
          "--profile also each setting's costliest operators")  # fmt: skip
    for missing in (["--data", "d"], ["--model", "m"]):  # both are required
        with pytest.raises(SystemExit) as e:
            step_time.main(missing)
        assert e.value.code == 2


@pytest.mark.parametrize(
    ("module", "question", "env"),
    [
        ("arm64_check", "`make arm64-check`: do the int8 models answer the same on ARM processors as on this x86 "
         "machine?", "folder scripts/arm64-env.sh provisioned"),
        ("avx2_check", "`make avx2-check`: do 8-bit weights lose accuracy on ONNX Runtime's AVX2 int8 kernels, here, "
         "on an AMX machine?", "folder `scripts/arm64-env.sh qemu` provisioned"),
    ],
)  # fmt: skip
def test_the_emulation_checks_help(module, question, env):
    parser = importlib.import_module(f"edgeqa.export.emulation.{module}").build_parser()
    text = " ".join(parser.format_help().split())
    assert text.startswith(f"usage: python -m edgeqa.export.emulation.{module} [-h]")
    assert f"] {question} options:" in text
    _says(text, "--shared SHARED shared teacher and data (../shared)", "--quickstart QUICKSTART models of `make run`",
          f"--env ENV {env}", "--parallel PARALLEL jobs at a time, one thread each")  # fmt: skip
    assert re.search(r"--limit LIMIT first N dev questions \(\d+\) -", text)
    first = parser.get_default("profiles")[0]
    assert parser.parse_args(["--profiles", first, first]).profiles == [first, first]  # one or more
