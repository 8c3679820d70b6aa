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
