"""Latency per real question (bench/question_latency.py): each question of a seeded sample answered alone, end to
end, window by window at its own length; pooled over interleaved passes; in the report beside batch 1 x 384, with
targets on either. Expected values are worked out by hand."""

from __future__ import annotations

import json

import pytest

from conftest import write_squad
from edgeqa.bench import question_latency as ql
from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.markdown import to_markdown
from edgeqa.bench.qa import QAConfig
from edgeqa.bench.report import build_report, make_row
from edgeqa.bench.squad import SquadExample
from edgeqa.bench.targets import Target

# 60 context words of one token each and "who?" (2 tokens) at max_length 32, doc_stride 8: 27 context tokens a
# window, the next starting 8 before the last ended (tests/test_promises_scoring.py): windows of 32, 32 and
# 3 + 2 + 22 = 27 tokens. "who lived in the city?" (6 tokens) about "the king lived in the city on the river." (10):
# one window of 6 + 10 + 3 = 19.
LONG = (" ".join(["the"] * 60), "who?", ["the"])
SHORT = ("the king lived in the city on the river.", "who lived in the city?", ["the king"])
WINDOWS = [(1, 32), (1, 32), (1, 27), (1, 19)]
QA = QAConfig(max_length=32, doc_stride=8)


class _Recorder:
    """An engine around the real one that records the shape of every input it is given, and its mask."""

    def __init__(self, engine):
        self.engine, self.backend, self.input_names = engine, engine.backend, engine.input_names
        self.shapes, self.masks = [], []

    def __call__(self, inputs):
        self.shapes.append(inputs["input_ids"].shape)
        self.masks.append(inputs["attention_mask"].tolist())
        return self.engine(inputs)


def _loaded(model):
    from edgeqa.bench.engines import load_qa_model

    qa = load_qa_model(model, 1)
    qa.engine = _Recorder(qa.engine)
    return qa


def test_each_question_is_timed_alone_window_by_window_at_its_own_length(tiny_qa_model, tmp_path):
    """Two questions: the long one cut into windows of 32, 32 and 27 tokens, the short one a single window of 19,
    each run alone (batch 1) at its own length, never padded (masks all ones): 4 windows, 110 / 4 = 27.5 tokens on
    average. Warm-up answers the first question once untimed before (its 3 windows). The stages, each timed inside
    its question's wall clock, add up to no more than the questions' times, and their shares to 1."""
    data = write_squad(tmp_path / "dev.json", [LONG, SHORT])
    qa = _loaded(tiny_qa_model)
    result = ql.time_questions(qa, data, 5, QA, warmup=1)
    assert qa.engine.shapes == WINDOWS[:3] + WINDOWS
    assert all(mask == [[1] * n] for mask, (_, n) in zip(qa.engine.masks, WINDOWS[:3] + WINDOWS, strict=True))
    assert (result["questions"], result["windows"], result["mean_tokens"], result["runs"]) == (2, 4, 27.5, 2)
    assert result["data"] == str(data) and result["seed"] == ql.QUESTION_SEED and result["qa"] == QA.to_dict()
    assert len(result["samples_ms"]) == 2 and 0 < result["p50_ms"] <= result["p90_ms"]
    assert result["p50_ms"] == pytest.approx(sum(result["samples_ms"]) / 2, abs=1e-3)  # the median of two
    assert sum(result["stage_ms"].values()) <= sum(result["samples_ms"]) + 1e-3
    assert set(result["stage_share"]) == {"tokenize", "model", "spans"}
    assert sum(result["stage_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert result["stage_share"]["model"] > 0


def test_the_sample_is_the_same_for_the_same_seed_and_kept_in_file_order(tiny_qa_model, tmp_path):
    examples = [SquadExample(f"q{i}", "who?", "the king", ("king",), (4,)) for i in range(10)]
    four = ql.sample_questions(examples, 4)
    assert four == ql.sample_questions(examples, 4, seed=ql.QUESTION_SEED) and len({e.id for e in four}) == 4
    assert [int(e.id[1:]) for e in four] == sorted(int(e.id[1:]) for e in four)
    assert ql.sample_questions(examples, 4, seed=1) != four  # another seed, other questions
    assert ql.sample_questions(examples, 10) == examples and ql.sample_questions(examples, 99) == examples
    # two models given the same file and count answer the same questions: the same windows, in the same order
    data = write_squad(tmp_path / "dev.json", [SHORT, LONG, SHORT, SHORT, LONG, SHORT])
    first, second = _loaded(tiny_qa_model), _loaded(tiny_qa_model)
    ql.time_questions(first, data, 3, QA, warmup=0)
    ql.time_questions(second, data, 3, QA, warmup=0)
    assert first.engine.shapes == second.engine.shapes and len(first.engine.shapes) >= 3


def test_passes_pool_their_questions_and_say_how_far_their_medians_moved():
    """Three passes over the same 3 questions, 1-3, 4-6 and 7-9 ms: pooled p50 5, p90 1 + 0.9 x 8 = 8.2, mean 5,
    9 runs; the medians 2, 5, 8 spread (8 - 2) / 5 = 1.2; stage times add up, 3 + 24 + 3 = 30 ms, shares 0.1, 0.8,
    0.1. One pass has no spread; no timing in the first pass means none at all."""
    passes = [{"questions": 3, "windows": 4, "mean_tokens": 20.0, "p50_ms": p, "samples_ms": [p - 1, p, p + 1],
               "stage_ms": {"tokenize": 1.0, "model": 8.0, "spans": 1.0}} for p in (2.0, 5.0, 8.0)]  # fmt: skip
    merged = ql.merge_question_passes(passes)
    assert (merged["questions"], merged["windows"], merged["mean_tokens"], merged["runs"]) == (3, 4, 20.0, 9)
    assert merged["p50_ms"] == pytest.approx(5.0) and merged["mean_ms"] == pytest.approx(5.0)
    assert merged["p90_ms"] == pytest.approx(8.2)
    assert merged["samples_ms"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert merged["pass_p50_ms"] == [2.0, 5.0, 8.0] and merged["pass_spread"] == pytest.approx(1.2)
    assert merged["stage_ms"] == {"tokenize": 3.0, "model": 24.0, "spans": 3.0}
    assert merged["stage_share"] == {"tokenize": 0.1, "model": 0.8, "spans": 0.1}
    assert ql.merge_question_passes(passes[:1])["pass_spread"] is None
    assert ql.merge_question_passes([None, None]) is None


# --- in the report -------------------------------------------------------------------------------------------------


def _lat(p50, p90=None):
    return {"batch_size": 1, "seq_len": 384, "p50_ms": p50, "p90_ms": p90 or p50, "p99_ms": p50, "mean_ms": p50,
            "throughput": 1000 / p50, "runs": 30, "pass_spread": None, "samples_ms": [p50]}  # fmt: skip


def _questions(p50, p90, spread):
    return {"data": "dev.json", "seed": 0, "questions": 100, "windows": 104, "mean_tokens": 171.24, "p50_ms": p50,
            "p90_ms": p90, "mean_ms": p50, "runs": 300, "stage_share": {"tokenize": 0.05, "model": 0.9, "spans": 0.05},
            "pass_p50_ms": [p50], "pass_spread": spread, "samples_ms": [p50] * 300}  # fmt: skip


def _row(name, p50, q, f1):
    bench = {"backend": "onnxruntime", "model": f"m/{name}", "file_bytes": 2**20, "peak_rss_mb": 100.0,
             "latency": [_lat(p50)], "questions": q}  # fmt: skip
    return make_row(name, bench, {"exact_match": f1 - 10, "f1": f1})


def _report(targets=(), rows=None):
    # At 1 x 384 int8 is 40 / 10 = 4x the fp32 reference; per question only 30 / 15 = 2x (its windows are shorter
    # than 384 tokens, where attention's share is smaller). "old" was timed before questions were.
    rows = rows or [_row("fp32", 40.0, _questions(30.0, 90.0, 0.05), 80.0),
                    _row("int8", 10.0, _questions(15.0, 45.0, 0.3), 79.9), _row("old", 20.0, None, 79.0)]  # fmt: skip
    bench = {"threads": 2, "warmup": 1, "repeats": 30, "rounds": 3, "batch_sizes": [1], "seq_lens": [384],
             "questions": 100}  # fmt: skip
    return build_report("q", rows, "fp32", {"data": "dev.json", "limit": None, "questions": 10570}, bench,
                        {"cpu": "x", "logical_cores": 2}, {"numpy": "1"}, targets=targets)  # fmt: skip


def test_rows_carry_the_latency_per_question_and_its_speedup():
    """fp32 30 ms per question, int8 15: int8's speed-up per question is 2.0 (at 1 x 384: 4.0); a row timed without
    questions has none. int8's passes per question spread 30%: flagged as such; its p90 at 3x its p50 is not (per
    question it is the spread of question lengths), nor the reference's 3x."""
    fp32, int8, old = _report()["rows"]
    assert (fp32["question_p50_ms"], fp32["question_p90_ms"], fp32["question_speedup"]) == (30.0, 90.0, 1.0)
    assert (int8["question_p50_ms"], int8["question_speedup"], int8["speedup"]) == (15.0, 2.0, 4.0)
    assert (old["question_p50_ms"], old["question_speedup"], old["question_latency"], old["speedup"]) == (
        None, None, None, 2.0)  # fmt: skip
    assert "samples_ms" not in int8["question_latency"] and int8["question_latency"]["windows"] == 104
    assert fp32["timing_flags"] == [] and old["timing_flags"] == []
    assert int8["timing_flags"] == ["per question: passes disagree: p50 moved 30% between passes (limit 25%)"]
    assert _report()["warnings"] == [
        "int8: per question: passes disagree: p50 moved 30% between passes (limit 25%)"]  # fmt: skip


def test_the_markdown_shows_both_latencies_and_names_each():
    md = to_markdown(_report()).splitlines()
    assert md[md.index("**Warnings** (⚠ in the table):") + 4 :][:5] == [
        "| variant | backend | size MB | peak RSS MB | p50 ms (1x384) | p90 ms (1x384) | pass spread "
        "| speed-up (1x384) | p50 ms/question | speed-up/question | EM | F1 | ΔF1 | scored at batch | Pareto |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
        "| fp32 | onnxruntime | 1.0 | 100 | 40.0 | 40.0 | - | 1.00x | 30.0 | 1.00x | 70.00 | 80.00 | +0.00 | - | yes |",
        "| int8 | onnxruntime | 1.0 | 100 | 10.0 | 10.0 | - | 4.00x | 15.0 ⚠ | 2.00x | 69.90 | 79.90 | -0.10 | - | "
        "yes |",
        "| old | onnxruntime | 1.0 | 100 | 20.0 | 20.0 | - | 2.00x | - | - | 69.00 | 79.00 | -1.00 | - |  |",
    ]
    start = md.index("| variant | questions | windows | tokens per window | p50 ms | p90 ms | pass spread | speed-up "
                     "| tokenise | model | span search |")  # fmt: skip
    assert md[start - 2] == (
        "Latency per question: 100 questions of dev.json (drawn with seed 0), each answered alone at batch 1, end to "
        "end: tokenisation, the model on each window at its own length, the span search. Shares: of the three "
        "stages' time."
    )
    assert md[start + 2 : start + 5] == [
        "| fp32 | 100 | 104 | 171.2 | 30.0 | 90.0 | 5.0% | 1.00x | 5.0% | 90.0% | 5.0% |",
        "| int8 | 100 | 104 | 171.2 | 15.0 | 45.0 | 30.0% | 2.00x | 5.0% | 90.0% | 5.0% |",
        "",
    ]


def test_a_target_is_judged_on_the_latency_it_names():
    """3x at 99% of F1 80 (79.2 needed): at 1 x 384 int8 is 4x with F1 79.9, met; per question int8 is only 2x and no
    model is that fast, missed, the fastest at that F1 being int8 at 2x per question. 1.5x per question at 99.9%
    (79.92 needed): int8 is fast enough but 0.02 F1 short."""
    targets = (Target(3, 0.99), Target(3, 0.99, "questions"), Target(1.5, 0.999, "questions"))
    report = _report(targets)
    fixed, per_question, close = report["targets"]
    assert (fixed["latency"], fixed["met"], fixed["best_at_speed"]) == (
        "fixed", True, {"name": "int8", "speedup": 4.0, "f1": 79.9})  # fmt: skip
    assert (per_question["latency"], per_question["met"], per_question["best_at_speed"]) == ("questions", False, None)
    assert per_question["fastest_at_f1"] == {"name": "int8", "speedup": 2.0, "f1": 79.9}
    assert (close["met"], close["f1_short"], close["best_at_speed"]["name"]) == (False, 0.02, "int8")
    md = to_markdown(report)
    assert "| target | latency | F1 needed | met | most accurate model at that speed | fastest model at that F1 |" in md
    assert "| >= 3x at >= 99% | 1x384 | 79.20 | yes | int8: 4.00x, F1 79.90 | int8: 4.00x, F1 79.90 |" in md
    missed = "| >= 3x at >= 99% | per question | 79.20 | **no**: no model is that fast | - | int8: 2.00x, F1 79.90 |"
    assert missed in md
    untimed = [_row("fp32", 40.0, None, 80.0), _row("int8", 10.0, None, 79.9)]
    with pytest.raises(EdgeQAError, match=r"^target >= 3x at >= 99% is per question, but no row was timed per"):
        _report((Target(3, 0.99, "questions"),), untimed)
    assert "p50 ms/question" not in to_markdown(_report(rows=untimed))  # nothing per question: the table as it was


def test_a_targets_latency_parses_and_an_unknown_one_is_refused():
    assert Target.parse("3:0.98:questions") == Target(3.0, 0.98, "questions")
    assert Target.parse("3:0.98") == Target(3.0, 0.98, "fixed") == Target(3, 0.98)
    assert Target.parse("2:0.9:fixed").latency == "fixed"
    for text, bad in (("3:0.98:median", "'median'"), ("3:0.98:Questions", "'Questions'")):
        with pytest.raises(EdgeQAError, match=rf"^a target's latency must be fixed or questions, got {bad}$"):
            Target.parse(text)
    with pytest.raises(EdgeQAError, match=r"^target\.latency should be str \| None, got 3$"):
        Target(3, 0.9, 3)


def test_a_recipes_targets_take_a_latency(tmp_path, toy_squad):
    from conftest import write_recipe
    from edgeqa.pipeline.recipe import load_recipe

    steps = ("- bench: {}\n- report: {targets: [{speedup: 3, f1_share: 0.98, latency: questions}, "
             "{speedup: 2, f1_share: 0.99}]}\n")  # fmt: skip
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tmp_path, toy_squad, steps))
    (report,) = [s for s in recipe.steps if s.kind == "report"]
    assert report.targets == (Target(3, 0.98, "questions"), Target(2, 0.99, "fixed"))
    bad = steps.replace("latency: questions", "latency: p99")
    with pytest.raises(EdgeQAError, match=r"r\.yaml:\d+: .*a target's latency must be fixed or questions, got 'p99'"):
        load_recipe(write_recipe(tmp_path / "r.yaml", tmp_path, toy_squad, bad))
    odd = steps.replace("latency: questions", "basis: questions")
    with pytest.raises(EdgeQAError, match=r"r\.yaml:\d+: report targets must be a list of .*latency: fixed or"):
        load_recipe(write_recipe(tmp_path / "r.yaml", tmp_path, toy_squad, odd))


# --- through the command line -------------------------------------------------------------------------------------


def test_edgeqa_report_times_each_model_per_question_and_times_again_when_that_changes(
    tiny_qa_model, tmp_path, monkeypatch, capsys
):
    """`edgeqa report --questions 2` on 3 toy questions: each model's bench result holds 2 questions of --data, the
    rows their p50 and speed-up, report.md the columns. Run again as it was, nothing is timed again; with another
    count of questions or another data file, everything is."""
    from edgeqa.bench import latency
    from edgeqa.cli import main

    timed = []

    def in_process(model, cfg, data=None, qa=QAConfig()):
        timed.append((cfg.questions, data))
        return latency.benchmark(model, cfg, data, qa)

    monkeypatch.setattr(latency, "benchmark_subprocess", in_process)
    data = write_squad(tmp_path / "dev.json", [LONG, SHORT, SHORT])
    out = tmp_path / "out"
    argv = ["report", "--variant", f"a={tiny_qa_model}", "--variant", f"b={tiny_qa_model}", "--data", str(data),
            "--out", str(out), "--seq-lens", "16", "--warmup", "0", "--repeats", "2", "--threads", "1",
            "--questions", "2", "--target", "1:0.5:questions"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert timed == [(2, str(data))] * 2
    bench = json.loads((out / "bench" / "a.json").read_text())
    assert bench["questions"]["questions"] == 2 and bench["questions"]["runs"] == 2
    assert bench["questions_from"] == {"data": str(data), "qa": QAConfig().to_dict()}
    report = json.loads((out / "report.json").read_text())
    a, b = report["rows"]
    assert a["question_p50_ms"] == bench["questions"]["p50_ms"] and a["question_speedup"] == 1.0
    assert b["question_speedup"] == pytest.approx(a["question_p50_ms"] / b["question_p50_ms"], abs=1e-3)
    assert report["bench"]["questions"] == 2 and report["targets"][0]["latency"] == "questions"
    assert "| p50 ms/question | speed-up/question |" in (out / "report.md").read_text()
    assert main(argv) == 0 and len(timed) == 2  # unchanged: the timings are kept
    assert main([*argv[:-4], "--questions", "1", *argv[-2:]]) == 0 and timed[2:] == [(1, str(data))] * 2
    other = write_squad(tmp_path / "other.json", [SHORT, LONG])
    argv[argv.index(str(data))] = str(other)
    assert main([*argv[:-4], "--questions", "1", *argv[-2:]]) == 0 and timed[4:] == [(1, str(other))] * 2


class _HandModel:
    """A QAModel stand-in that records how it is asked and reports stage times set by hand: per question 1.11111 ms
    tokenising, 2 then 3 ms in the model, 0.5 ms searching spans; 2 windows of 51 tokens together, then 1 of 50."""

    def __init__(self):
        self.calls, self.answered = [], 0

    def answer(self, examples, qa, batch_size, allow_null, progress, timings=None):
        self.calls.append((len(examples), batch_size, allow_null, progress, timings is None))
        if timings is not None:
            first = self.answered == 0
            timings.update({"tokenize_s": 0.00111111, "model_s": 0.002 if first else 0.003, "postprocess_s": 0.0005,
                            "windows": 2 if first else 1, "tokens": 51 if first else 50})  # fmt: skip
            self.answered += 1


class _Clock:
    """perf_counter by hand: each question starts at 100 s and takes 1.2345678 then 3.0 ms."""

    def __init__(self):
        self.ticks = iter([100.0, 100.0012345678, 100.0, 100.003])

    def perf_counter(self):
        return next(self.ticks)


@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_the_question_timer_adds_each_questions_stages_and_rounds_by_hand(tmp_path, monkeypatch, version):
    """Two questions, one warm-up answer: every answer alone at batch 1, unanswerable allowed on v2.0 only, without
    a progress bar; samples 1.2346 and 3.0 ms (to 4 decimals); stages added: tokenising 2.2222 ms, the model 5.0,
    spans 1.0 (shares of 8.2222: 0.2703, 0.6081, 0.1216); 101 tokens over 3 windows, 33.7 on average."""
    data = write_squad(tmp_path / "dev.json", [SHORT, SHORT], version=version)
    model = _HandModel()
    monkeypatch.setattr(ql, "time", _Clock())
    result = ql.time_questions(model, data, 2, QA, warmup=1)
    v2 = version == "2.0"
    assert model.calls == [(1, 1, v2, False, True), (1, 1, v2, False, False), (1, 1, v2, False, False)]
    assert result["samples_ms"] == [1.2346, 3.0] and result["runs"] == 2
    assert result["stage_ms"] == {"tokenize": 2.2222, "model": 5.0, "spans": 1.0}
    assert result["stage_share"] == {"tokenize": 0.2703, "model": 0.6081, "spans": 0.1216}
    assert (result["windows"], result["mean_tokens"]) == (3, 33.7)


def test_a_summary_of_no_stage_time_has_no_shares_and_small_totals_have_shares():
    assert ql.summarise([1.0], {"model": 0.0, "spans": 0.0})["stage_share"] == {"model": None, "spans": None}
    assert ql.summarise([1.0], {"model": 0.25, "spans": 0.25})["stage_share"] == {"model": 0.5, "spans": 0.5}
    assert ql.summarise([1.23456789], {"model": 1.0})["samples_ms"] == [1.2346]


def test_merged_passes_round_their_medians_and_stage_times_to_four_decimals():
    passes = [{"p50_ms": p, "samples_ms": [p], "stage_ms": {"model": m}} for p, m in ((1.23456, 0.123456), (2.0, 0.1))]
    merged = ql.merge_question_passes(passes)
    assert merged["pass_p50_ms"] == [1.2346, 2.0] and merged["stage_ms"] == {"model": 0.2235}


def test_a_row_not_timed_per_question_has_every_field_empty_and_speedups_have_three_decimals():
    assert ql.question_fields({"latency": []}) == {"question_p50_ms": None, "question_p90_ms": None,
                                                  "question_latency": None}  # fmt: skip
    rows = [{"question_p50_ms": 3.0}, {"question_p50_ms": None}]
    ql.question_speedups(rows, {"question_p50_ms": 10.0})
    assert [r["question_speedup"] for r in rows] == [3.333, None]


def test_a_sample_of_nearly_all_questions_draws_each_once():
    examples = [SquadExample(f"q{i}", "who?", "the king", ("king",), (4,)) for i in range(10)]
    for seed in range(5):
        assert len({e.id for e in ql.sample_questions(examples, 9, seed)}) == 9
