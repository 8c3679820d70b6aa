"""`make arm64-check` and `make avx2-check` end to end, in-process, with a stand-in emulator.

The real checks need qemu-user and an aarch64 Python (scripts/arm64-env.sh); here a stand-in takes the emulator's
place: it runs the runner natively and then adds a known constant to every logit of the runs on one CPU profile.
The reports must then say, for exactly those runs, a largest logit difference of that constant against the x86 run
(and against the other profile of the same model), identical answers (a constant shift moves no span), and EM/F1
equal to `edgeqa eval`'s on the same model and questions. The data is a SQuAD-layout file of the three toy
questions laid out as ../shared is, the teacher a tiny random BERT.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import TOY_QAS, make_tiny_qa_model, write_squad
from edgeqa.bench.evaluate import evaluate
from edgeqa.export.emulation import arm64_check, arm64_runner, avx2_check
from edgeqa.export.emulation.arm64_report import probe_verdict
from edgeqa.export.emulation.arm64_runner import run_probe
from edgeqa.export.quantize import preset_record

VERSION = "qemu-stand-in version 0.0"

# Runs the command natively; shifts every logit of the runs on QEMU_CPU=SHIFTED_CPU made without --disable-kleidiai.
STAND_IN = """#!{python}
import os, subprocess, sys
import numpy as np
if sys.argv[1:] == ["--version"]:
    print("{version}")
    sys.exit(0)
cmd = sys.argv[1:] if sys.argv[1] == sys.executable else [sys.executable, *sys.argv[1:]]
rc = subprocess.call(cmd)
out = sys.argv[sys.argv.index("--out") + 1]
if rc == 0 and os.environ["QEMU_CPU"] == "{cpu}" and "--disable-kleidiai" not in sys.argv:
    with np.load(out) as saved:
        arrays = {{name: saved[name] + {shift} for name in saved.files}}
    np.savez(out, **arrays)
sys.exit(rc)
"""


def write_stand_in(path: Path, cpu: str, shift: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STAND_IN.format(python=sys.executable, version=VERSION, cpu=cpu, shift=shift))
    path.chmod(0o755)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A folder laid out as ../shared: the teacher (a tiny BERT) and the dev file (the three toy questions)."""
    root = tmp_path_factory.mktemp("shared")
    make_tiny_qa_model(root / "models" / "minilm-l6-h384-squad1")
    (root / "data" / "squad").mkdir(parents=True)
    write_squad(root / "data" / "squad" / "dev-v1.1.json.gz", TOY_QAS, gz=True)
    return root


def _rows(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["profile"]): r for r in report["rows"]}


def test_arm64_check_from_a_fresh_clone_makes_its_models_and_compares_every_run_with_x86(shared, tmp_path, capsys):
    env, out = tmp_path / "env", tmp_path / "out"
    write_stand_in(env / "run-python", "max", 0.5)  # the sme profile's CPU; sme-no-kleidiai disables KleidiAI
    write_stand_in(env / "qemu" / "usr" / "bin" / "qemu-aarch64", "none", 0.0)  # asked only for its version
    argv = ["--shared", str(shared), "--limit", "2", "--profiles", "sme", "sme-no-kleidiai", "--out", str(out)]
    argv += ["--env", str(env), "--quickstart", str(tmp_path / "no-quickstart"), "--parallel", "2"]

    assert arm64_check.main(argv) == 0

    report = json.loads((out / "arm64-check.json").read_text())
    models = {"ort-int8-dynamic": "model.ort", "onnx-int8-arm64": "model.onnx"}
    assert report["models"] == {m: str(out / "models" / m / f) for m, f in models.items()}
    made = {p.name for p in (out / "models").iterdir()}
    assert made == {"onnx-fp32", "onnx-fused-attention", "onnx-int8-dynamic", "ort-int8-dynamic", "onnx-int8-arm64"}
    assert report["questions"] == 2 and report["windows"] == 2  # the first 2 of 3; each context fits one window
    fused = out / "models" / "onnx-fused-attention"
    assert json.loads((fused / "fusion.json").read_text())["fusions"] == ["attention"]
    assert json.loads((fused / "parity.json").read_text())["questions"] == 2  # checked against the export
    assert [o.version for o in onnx.load(out / "models/onnx-fp32/model.onnx").opset_import if o.domain == ""] == [17]
    presets = {m: json.loads((out / "models" / m / "quantization.json").read_text())["preset"]
               for m in ("onnx-int8-dynamic", "onnx-int8-arm64")}  # fmt: skip
    assert presets["onnx-int8-arm64"] == preset_record("arm64") and presets["onnx-int8-dynamic"] == preset_record(
        "auto"
    )
    logits = {p.name for p in (out / "logits").glob("*.npz")}
    assert logits == {"inputs.npz"} | {f"{m}.{p}.npz" for m in models for p in ("x86", "sme", "sme-no-kleidiai")}
    printed = capsys.readouterr().out
    assert printed == (out / "arm64-check.md").read_text().split("\n\n", 1)[1] + (
        f"wrote {out / 'arm64-check.json'} and arm64-check.md ({report['wall_s']:.0f} s)\n")  # fmt: skip
    assert report["qemu"] == VERSION and set(report["profiles"]) == {"sme", "sme-no-kleidiai"}
    assert report["profiles"]["sme-no-kleidiai"]["disable_kleidiai"] is True

    rows = _rows(report)
    assert list(rows) == [
        ("ort-int8-dynamic", "x86 (native)"),
        ("onnx-int8-arm64", "x86 (native)"),
        ("ort-int8-dynamic", "sme"),
        ("ort-int8-dynamic", "sme-no-kleidiai"),
        ("onnx-int8-arm64", "sme"),
        ("onnx-int8-arm64", "sme-no-kleidiai"),
    ]
    for model, folder in (("ort-int8-dynamic", "ort-int8-dynamic"), ("onnx-int8-arm64", "onnx-int8-arm64")):
        x86 = rows[(model, "x86 (native)")]
        expected = evaluate(out / "models" / folder, shared / "data/squad/dev-v1.1.json.gz", 2, batch_size=1, threads=1)
        assert (x86["exact_match"], x86["f1"]) == (expected["exact_match"], expected["f1"])
        for profile, shift, kleidiai_off in (("x86 (native)", 0.0, False), ("sme", 0.5, False),
                                              ("sme-no-kleidiai", 0.0, True)):  # fmt: skip
            row = rows[(model, profile)]
            assert row["max_abs_logit_diff"] == pytest.approx(shift, abs=1e-5)
            assert row["same_answer_share"] == 1.0 and row["disable_kleidiai"] is kleidiai_off
            assert (row["exact_match"], row["f1"]) == (row["x86_exact_match"], row["x86_f1"]) == (
                x86["exact_match"], x86["f1"])  # fmt: skip
        assert rows[(model, "sme")]["qemu_cpu"] == "max" and x86["qemu_cpu"] is None
    import onnxruntime

    for row in report["rows"]:  # what each run saw, from the runner's record
        assert (row["machine"], row["device"], row["onnxruntime"]) == (
            platform.machine(),
            "CPU",
            onnxruntime.__version__,
        )
        assert (row["cpu_features"], row["cpuid_features"]) == (arm64_runner.cpu_features(),
                                                                arm64_runner.cpuid_features())  # fmt: skip
        assert all(row[k] >= 0 and round(row[k], 1) == row[k] for k in ("load_s", "windows_s"))
    cpuinfo = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()[:30] if ":" in line)
    cpuinfo = {k.strip(): v.strip() for k, v in cpuinfo.items()}
    assert report["host_cpu"] == cpuinfo["model name"] and report["host_cores"] == os.cpu_count()
    assert report["host_cpu_family_model"] == f"{cpuinfo['cpu family']}/{cpuinfo['model']}"
    assert report["data"] == str(shared / "data/squad/dev-v1.1.json.gz") and report["wall_s"] > 0
    assert report["note"].startswith("load_s and windows_s are how long the jobs took")
    parity = json.loads((out / "models" / "onnx-fp32" / "parity.json").read_text())
    assert parity["questions"] == 2 and parity["ok"]  # the export was checked on the questions asked
    pairs = report["pairwise"]
    assert pairs["ort-int8-dynamic@sme vs ort-int8-dynamic@sme-no-kleidiai"]["max_abs_logit_diff"] == pytest.approx(
        0.5, abs=1e-5
    )
    assert pairs["onnx-int8-arm64@x86 vs onnx-int8-arm64@sme-no-kleidiai"]["max_abs_logit_diff"] == 0.0
    assert len(pairs) == 6 and not any("ort-int8-dynamic" in k and "onnx-int8-arm64" in k for k in pairs)

    predictions = json.loads((out / "predictions.json").read_text())
    assert set(predictions) == {f"{m}@{p}" for m in models for p in ("x86", "sme", "sme-no-kleidiai")}
    assert set(predictions["onnx-int8-arm64@sme"]) == {"q0", "q1"}
    md = (out / "arm64-check.md").read_text().splitlines()
    assert md[0].startswith("First 2 SQuAD v1.1 dev questions (2 windows), batch 1") and md[0].endswith(f"{VERSION}.")
    assert md[2].startswith("| model | run (QEMU_CPU) |") and len(md) == 2 + 2 + 6


def test_arm64_check_uses_the_quickstart_models_and_makes_only_the_arm64_one(tmp_path, monkeypatch):
    quickstart, out = tmp_path / "quickstart", tmp_path / "out"
    for folder, name in (("onnx-fused-attention", "model.onnx"), ("ort-int8-dynamic", "model.ort")):
        (quickstart / folder).mkdir(parents=True)
        (quickstart / folder / name).write_bytes(b"")
    made = []
    monkeypatch.setattr(arm64_check, "export_onnx", lambda *a: pytest.fail("exported again"))
    monkeypatch.setattr(arm64_check, "convert_to_ort", lambda *a: pytest.fail("converted again"))
    monkeypatch.setattr(arm64_check, "quantize", lambda base, dest, cfg, **kw: made.append((base, dest, cfg)))

    models = arm64_check.ensure_models(tmp_path / "teacher", quickstart, out, [])

    assert models == {
        "ort-int8-dynamic": quickstart / "ort-int8-dynamic" / "model.ort",
        "onnx-int8-arm64": out / "onnx-int8-arm64" / "model.onnx",
    }
    assert [(b, d) for b, d, _ in made] == [(quickstart / "onnx-fused-attention", out / "onnx-int8-arm64")]
    assert made[0][2] == arm64_check.preset("arm64")


def test_arm64_check_without_the_emulated_runtime_says_how_to_provision_it(tmp_path, capsys):
    assert arm64_check.main(["--env", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err == f"arm64-check: error: {tmp_path / 'none'}: no emulated ONNX Runtime; run scripts/arm64-env.sh first\n"
    assert not (tmp_path / "out").exists()


def test_avx2_check_compares_each_variant_natively_and_under_the_avx2_profile(shared, tmp_path):
    env, out = tmp_path / "env", tmp_path / "out"
    write_stand_in(env / "qemu" / "usr" / "bin" / "qemu-x86_64", "Haswell-noTSX", 0.25)
    argv = ["--shared", str(shared), "--limit", "2", "--variants", "int8-w8-per-channel", "int8-w7-per-tensor"]
    argv += ["--out", str(out), "--env", str(env), "--quickstart", str(tmp_path / "none"), "--parallel", "2"]

    assert avx2_check.main(argv) == 0

    report = json.loads((out / "avx2-check.json").read_text())
    assert report["questions"] == 2 and report["preset"] == "avx2" and report["qemu"] == VERSION
    assert report["variants"] == {
        "int8-w8-per-channel": {"per_channel": True, "reduce_range": False,
                                "model": str(out / "models" / "int8-w8-per-channel" / "model.onnx")},
        "int8-w7-per-tensor": {"per_channel": False, "reduce_range": True,
                               "model": str(out / "models" / "int8-w7-per-tensor" / "model.onnx")},
    }  # fmt: skip
    assert report["base"] == str(out / "models" / "onnx-fused-attention")
    # Every variant is made (and kept for later runs); only the ones asked for run.
    assert {p.name for p in (out / "models").iterdir()} >= set(avx2_check.VARIANTS)
    verdict = probe_verdict(run_probe(out / "logits" / "u8s8_probe.onnx", 1))  # this machine's kernels, natively
    rows = _rows(report)
    assert list(rows) == [
        ("int8-w8-per-channel", "x86 (native)"),
        ("int8-w7-per-tensor", "x86 (native)"),
        ("int8-w8-per-channel", "avx2"),
        ("int8-w7-per-tensor", "avx2"),
    ]
    for (variant, profile), row in rows.items():
        expected = evaluate(out / "models" / variant, shared / "data/squad/dev-v1.1.json.gz", 2, batch_size=1,
                            threads=1)  # fmt: skip
        assert (row["exact_match"], row["f1"]) == (expected["exact_match"], expected["f1"])
        assert row["max_abs_logit_diff"] == pytest.approx(0.25 if profile == "avx2" else 0.0, abs=1e-5)
        assert row["u8s8_probe"] == verdict and row["same_answer_share"] == 1.0
    assert set(report["pairwise"]) == {f"{v}@x86 vs {v}@avx2" for v in ("int8-w8-per-channel", "int8-w7-per-tensor")}
    assert report["profiles"] == {"avx2": avx2_check.PROFILES["avx2"].__dict__}
    assert report["data"] == str(shared / "data/squad/dev-v1.1.json.gz")
    assert report["note"].startswith("load_s and windows_s are how long the jobs took")
    made = {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*.onnx")}
    assert avx2_check.main(argv) == 0  # again, into the same folder: the models are reused, the runs made again
    assert {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*.onnx")} == made
    md = (out / "avx2-check.md").read_text()
    assert "| int8-w7-per-tensor | 7-bit | per-tensor | avx2 (Haswell-noTSX) | " in md
    assert "| int8-w8-per-channel | 8-bit | per-channel | native | " in md


def test_the_jobs_run_emulated_first_and_a_failed_runner_names_its_job(tmp_path, monkeypatch):
    """The longest jobs first (emulated .onnx models, optimised at load, then emulated .ort, then native); a failure
    names its job and ends with what the runner said."""
    log = tmp_path / "order.log"

    def command(job, inputs, out, env_dir, probe=None):
        record = out.with_suffix(".json")
        if job.model == "bad":
            return ["sh", "-c", "echo boom >&2; exit 3"], {}
        return ["sh", "-c", f"echo {job.key} {out.name} >> {log}; echo '{{\"n\": 1}}' > {record}"], {}

    monkeypatch.setattr(arm64_check, "job_command", command)
    jobs = [
        arm64_check.Job("a", tmp_path / "a.ort", None),
        arm64_check.Job("a", tmp_path / "a.ort", arm64_check.PROFILES["sme"]),
        arm64_check.Job("b", tmp_path / "b.onnx", arm64_check.PROFILES["neoverse-n1"]),
    ]
    records = arm64_check.run_jobs(jobs, tmp_path / "in.npz", tmp_path, tmp_path / "env", parallel=1)
    assert log.read_text().splitlines() == ["b@neoverse-n1 b.neoverse-n1.npz", "a@sme a.sme.npz", "a@x86 a.x86.npz"]
    assert records["a@sme"] == {"n": 1, "logits": str(tmp_path / "a.sme.npz")} and len(records) == 3
    with pytest.raises(arm64_check.EdgeQAError) as e:
        arm64_check.run_jobs([arm64_check.Job("bad", tmp_path / "b.onnx", arm64_check.PROFILES["sme"])],
                             tmp_path / "in.npz", tmp_path, tmp_path / "env", parallel=1)  # fmt: skip
    assert str(e.value) == "bad@sme: the runner failed (3):\nboom\n"


def test_the_runner_from_its_command_line_records_what_it_was_asked(tmp_path):
    """The runner as the jobs start it (a file, its own arguments), here in-process, on a graph that echoes its ids."""
    from test_arm64_check import _echo_model

    _echo_model(tmp_path / "echo.onnx")
    ids = np.asarray([101, 7, 102], dtype=np.int64)
    np.savez(tmp_path / "in.npz", n_windows=np.asarray(1), **{"w0.input_ids": ids, "w0.token_type_ids": ids * 0})
    argv = ["--inputs", str(tmp_path / "in.npz"), "--model", str(tmp_path / "echo.onnx"), "--out"]
    argv += [str(tmp_path / "out.npz"), "--threads", "2", "--disable-kleidiai"]
    assert arm64_runner.main([*argv, "--disabled-optimizer", "A", "--disabled-optimizer", "B"]) == 0
    info = json.loads((tmp_path / "out.json").read_text())
    assert (info["threads"], info["disabled_optimizers"], info["disable_kleidiai"]) == (2, ["A", "B"], True)
    assert info["windows"] == 1 and info["cpu_features"] == arm64_runner.cpu_features() != ""
    with np.load(tmp_path / "out.npz") as saved:
        assert saved["w0.start"].tolist() == [101.0, 7.0, 102.0] and saved["w0.end"].tolist() == [0.0, 0.0, 0.0]


def test_the_runners_session_is_sequential_with_the_threads_and_kleidiai_setting_asked(tmp_path):
    from test_arm64_check import _echo_model

    _echo_model(tmp_path / "echo.onnx")
    opts = arm64_runner.open_session(tmp_path / "echo.onnx", 3, [], True).get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)
    assert opts.execution_mode.name == "ORT_SEQUENTIAL"
    assert opts.get_session_config_entry("mlas.disable_kleidiai") == "1"
    opts = arm64_runner.open_session(tmp_path / "echo.onnx", 1, [], False).get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration with key: mlas.disable_kleidiai"):
        opts.get_session_config_entry("mlas.disable_kleidiai")


def test_the_features_line_is_the_kernels_own(tmp_path):
    """/proc/cpuinfo's first `flags` (x86) or `Features` (aarch64) line, as ONNX Runtime's own probe reads it."""
    import platform

    text = Path("/proc/cpuinfo").read_text()
    key = "flags" if platform.machine() == "x86_64" else "Features"
    first = next(line for line in text.splitlines() if line.split(":")[0].strip() == key)

    assert arm64_runner.cpu_features() == first.partition(":")[2].strip()


def test_the_checks_defaults_are_what_make_and_the_docs_say(monkeypatch):
    """docs/arm64.md: the first 48 questions, neoverse-n1, sme and sme-no-kleidiai; docs/avx2-emulated.md: the first
    24, the avx2 profile, all four variants; both read ../shared and `make run`'s models, write under runs/, find
    the emulators in .arm64/ and run a job per core."""
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    common = {"shared": Path("../shared"), "quickstart": Path("runs/quickstart/models"), "env": Path(".arm64")}
    arm = vars(arm64_check.build_parser().parse_args([]))
    assert arm == {**common, "limit": 48, "profiles": ["neoverse-n1", "sme", "sme-no-kleidiai"],
                   "out": Path("runs/arm64-check"), "parallel": 7}  # fmt: skip
    avx2 = vars(avx2_check.build_parser().parse_args([]))
    assert avx2 == {**common, "limit": 24, "profiles": ["avx2"], "variants": list(avx2_check.VARIANTS),
                    "out": Path("runs/avx2-check"), "parallel": 7}  # fmt: skip
    for parser, arg, value in ((arm64_check, "--profiles", "avx2"), (avx2_check, "--profiles", "sme"),
                               (avx2_check, "--variants", "int8-w6")):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            parser.build_parser().parse_args([arg, value])
        assert e.value.code == 2
    assert arm64_check.build_parser().parse_args(["--limit", "5", "--parallel", "1"]).limit == 5
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # Python cannot tell: one job at a time
    assert arm64_check.build_parser().parse_args([]).parallel == avx2_check.build_parser().parse_args([]).parallel == 1


def test_the_runner_needs_its_inputs_model_and_output(tmp_path, capsys):

    for missing in ("--inputs", "--model", "--out"):
        argv = [a for name in ("--inputs", "--model", "--out") if name != missing for a in (name, str(tmp_path))]
        with pytest.raises(SystemExit) as e:
            arm64_runner.main(argv)
        assert e.value.code == 2 and f"the following arguments are required: {missing}" in capsys.readouterr().err


def test_the_features_line_on_an_arm_kernel_and_without_proc(monkeypatch):
    import io

    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd asimddp i8mm sve\nCPU part\t: 0xd0c\n"
    monkeypatch.setattr(arm64_runner, "open", lambda *a, **k: io.StringIO(arm), raising=False)
    assert arm64_runner.cpu_features() == "fp asimd asimddp i8mm sve"

    def gone(*a, **k):
        raise OSError("no /proc")

    monkeypatch.setattr(arm64_runner, "open", gone, raising=False)
    assert arm64_runner.cpu_features() == ""


def test_cpuid_features_are_read_on_x86_by_any_name_and_joined_by_spaces(monkeypatch):
    """On x86, as every machine of this project is: numpy reads SSE2 and AVX from cpuid."""

    monkeypatch.setattr(arm64_runner, "X86_CPUID_FEATURES", {"SSE2": "sse2", "AVX": "avx", "NOPE": "nope"})
    assert arm64_runner.cpuid_features() == "sse2 avx"  # every x86-64 processor has SSE2; AVX since 2011
    monkeypatch.setattr(arm64_runner.platform, "machine", lambda: "AMD64")  # Windows' name for it
    assert arm64_runner.cpuid_features() == "sse2 avx"
    monkeypatch.setattr(arm64_runner.platform, "machine", lambda: "aarch64")
    assert arm64_runner.cpuid_features() == ""


def test_windows_are_saved_unpadded_with_zero_segments_for_models_without_token_types(tmp_path):
    from edgeqa.bench.qa import QAConfig
    from edgeqa.bench.squad import load_squad

    model = make_tiny_qa_model(tmp_path / "distilbert", family="distilbert")  # DistilBERT has no token types
    examples = load_squad(write_squad(tmp_path / "dev.json", TOY_QAS)).examples
    features, lengths = arm64_check.write_inputs(examples, model, tmp_path / "in.npz", QAConfig())
    assert features.token_type_ids is None and len(lengths) == 3
    with np.load(tmp_path / "in.npz") as saved:
        assert int(saved["n_windows"]) == 3
        for i, n in enumerate(lengths):
            assert saved[f"w{i}.input_ids"].tolist() == list(features.input_ids[i]) and len(features.input_ids[i]) == n
            assert (
                saved[f"w{i}.attention_mask"].tolist() == [1] * n and saved[f"w{i}.token_type_ids"].tolist() == [0] * n
            )
            assert {saved[f"w{i}.{k}"].dtype for k in ("input_ids", "attention_mask", "token_type_ids")} == {
                np.dtype(np.int64)
            }


def test_the_machine_record_reads_the_first_processor_and_says_what_it_cannot(tmp_path, monkeypatch):
    read = Path.read_text
    cpuinfo = {"text": "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9B14\n"}

    def fake(self, *a, **k):
        if self == Path("/proc/cpuinfo"):
            if cpuinfo["text"] is None:
                raise OSError("no /proc")
            return cpuinfo["text"]
        return read(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", fake)
    monkeypatch.setattr(
        arm64_check.platform if hasattr(arm64_check, "platform") else platform, "processor", lambda: "x"
    )
    record = arm64_check.machine_record(tmp_path / "no-env")
    assert record == {"host_cpu": "AMD EPYC 9B14", "host_cpu_family_model": "25/17", "host_cores": os.cpu_count(),
                      "qemu": None}  # fmt: skip
    cpuinfo["text"] = "processor\t: 0\n" + "flags\t: fpu\n" * 29 + "model name\t: a second processor's\n"
    assert arm64_check.machine_record(tmp_path)["host_cpu"] == "x"  # only the first processor's 30 lines are read
    cpuinfo["text"] = None
    assert arm64_check.machine_record(tmp_path)["host_cpu_family_model"] == "?/?"


def test_the_checks_log_edgeqas_own_lines_at_info(monkeypatch):
    for name in ("edgeqa", "a.check"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    arm64_check.setup_logging("a.check")
    assert logging.getLogger("edgeqa.export.quantize").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("edgeqa.bench.evaluate").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("a.check").getEffectiveLevel() == logging.INFO
