"""What `--help` tells the user of the tools run by hand (the Optimum comparison, the GPU check, the step timer):
the tool's one-paragraph description, not the rest of its module text, and what each option is for."""

from __future__ import annotations

import pytest

from edgeqa.bench import compare_optimum
from edgeqa.compress import gpu_check, step_time


def _help(main, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines to the terminal's width


def test_the_optimum_comparisons_help(capsys):
    text = _help(compare_optimum.main, [], capsys)
    assert ("Side-by-side benchmark: edgeqa's int8 model against what a user gets from Hugging Face Optimum's own "
            "path.") in text and "as its documentation shows it" not in text  # fmt: skip
    for line in ("edgeqa int8 model folder", "first N dev questions (default: all)",
                 "alternating passes; repeats are split among them",
                 "Optimum's quantization preset (default auto: the one for this CPU)",
                 "{auto,arm64,avx2,avx512,avx512_vnni}"):  # fmt: skip
        assert line in text


def test_the_gpu_checks_help(capsys):
    text = _help(gpu_check.main, [], capsys)
    assert ("GPU check: train the distill-3l-gpu student for a few hundred steps on one GPU and score it there, "
            "inside one 15-minute device lease (start-up included), to show the GPU training path runs and what it "
            "costs.") in text and "gets only this checkout" not in text  # fmt: skip
    for line in ("here: write the folder that travels (teacher in fp16, SQuAD files)",
                 "there: train and score on the GPU, write gpu_check.json"):  # fmt: skip
        assert line in text
    run = _help(gpu_check.main, ["run"], capsys)
    for line in ("what `prepare` wrote", "result folder (default: $OUT)", "steps of each stage",
                 "first N train questions", "run without CUDA (to test this script)",
                 "the recipe whose distill step is trained"):  # fmt: skip
        assert line in run


def test_the_step_timers_help(capsys):
    text = _help(step_time.main, [], capsys)
    assert ("Time one recovery/distillation step at each dropout setting, side by side, with the training loop's "
            "own step.") in text and "python -m edgeqa.compress.step_time" not in text  # fmt: skip
    for line in ("a QA model folder", "a SQuAD training file", "global magnitude masks, as in recovery",
                 "timed steps per setting per round", "also each setting's costliest operators"):  # fmt: skip
        assert line in text


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
    import importlib

    parser = importlib.import_module(f"edgeqa.export.emulation.{module}").build_parser()
    text = " ".join(parser.format_help().split())
    assert text.startswith(f"usage: python -m edgeqa.export.emulation.{module} [-h]") and question in text
    for line in ("shared teacher and data (../shared)", "first N dev questions", "models of `make run`", env,
                 "jobs at a time, one thread each"):  # fmt: skip
        assert line in text
    first = parser.get_default("profiles")[0]
    assert parser.parse_args(["--profiles", first, first]).profiles == [first, first]  # one or more
