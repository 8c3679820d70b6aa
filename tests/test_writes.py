"""Writes that cannot finish: a full disk, a read-only target, a writer that fails half-way. Each is one error line
naming the output, exit 2, and the previous state left as it was; temporaries of killed writers are cleaned up.

The full-disk and read-only cases run the real CLI on a real tmpfs, mounted in a private mount namespace
(`unshare -m`, as root: the CI machine's user), so nothing outside the test sees it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TOY_QAS, write_squad
from edgeqa.bench.files import EdgeQAError, atomic_dir, atomic_file, remove_stale_temporaries


def _listing(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- the writers -------------------------------------------------------------------------------------------------


def test_a_folder_whose_writing_fails_keeps_what_it_held(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "model.onnx").write_text("first")
    failing = pytest.raises(EdgeQAError, match=rf"^{out}: cannot write: No space left on device$")
    with failing, atomic_dir(out) as tmp:
        (tmp / "model.onnx").write_text("second, half")
        _full_disk()
    assert _listing(out) == {"model.onnx": hashlib.sha256(b"first").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_file_whose_writing_fails_keeps_what_it_held(tmp_path):
    out = tmp_path / "metrics.json"
    out.write_text("{}")
    failing = pytest.raises(EdgeQAError, match=rf"^{out}: cannot write: No space left on device$")
    with failing, atomic_file(out) as tmp:
        tmp.write_text('{"f1": ')
        _full_disk()
    assert out.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_failure_that_is_not_a_write_is_not_called_one(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_dir(tmp_path / "out"):
        open(tmp_path / "no-such-input")  # noqa: SIM115
    # Another file's permission error is that file's, not the output's.
    with pytest.raises(PermissionError), atomic_dir(tmp_path / "out"):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "input.json"))
    assert not list(tmp_path.iterdir())


def test_temporaries_of_killed_writers_go_and_those_of_live_ones_stay(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(gone.stdout), os.getpid()
    (tmp_path / "models").mkdir()
    stale_dir = tmp_path / "models" / f".onnx.{dead}.abcd1234.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.onnx").write_text("half")
    stale_file = tmp_path / f".report.json.{dead}.k2j4h6g8.tmp"
    stale_file.write_text("{")
    live = tmp_path / "models" / f".fused.{alive}.zz99yy88.tmp"
    live.mkdir()
    foreign = tmp_path / ".notes.tmp"  # not a name edgeqa writes: someone else's
    foreign.write_text("keep")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale_dir, stale_file])
    assert live.exists() and foreign.exists() and not stale_dir.exists() and not stale_file.exists()


def test_writing_again_removes_what_a_killed_writer_left_beside_the_target(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.{int(gone.stdout)}.abcd1234.tmp"
    stale.mkdir()
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_write_that_no_atomic_writer_saw_is_still_one_line(tmp_path, capsys, monkeypatch):
    from edgeqa import cli

    def command(args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "cache" / "x.bin"))

    monkeypatch.setattr(cli, "cmd_score", command)
    code = cli.main(["score", "d.json", "p.json"])
    assert code == 2
    expected = f"edgeqa: error: {tmp_path / 'cache' / 'x.bin'}: cannot write: Read-only file system\n"
    assert capsys.readouterr().err == expected


# --- a real full disk and a real read-only mount --------------------------------------------------------------------

SCRIPT = """\
set -u
mount -t tmpfs -o size=2m tmpfs "$MNT"
cli_named() { name=$1; shift; "$PY" -m edgeqa.cli "$@" >/dev/null 2>"$RES/$name.err"; echo $? > "$RES/$name.rc"; }
# Every file but the run's copy of its recipe, which each run writes first.
snapshot() { (cd "$MNT" && find . -type f ! -name recipe.json -print0 | sort -z | xargs -0 sha256sum) >"$RES/$1.sums"; }
# The previous state: an int8 model and a recipe run with its export done.
cli_named q0 quantize --model "$ONNX" --parity-limit 0 "$MNT/int8"
cli_named r0 run "$RECIPE1" --out "$MNT/runs"
snapshot before
# Fill the disk but for 24 KiB: enough for a small record, not for a model.
free=$(df -k --output=avail "$MNT" | tail -1)
head -c $(( (free - 24) * 1024 )) /dev/zero > "$MNT/filler"
cli_named q_full quantize --model "$ONNX" --parity-limit 0 "$MNT/int8-b"
cli_named r_full run "$RECIPE2" --out "$MNT/runs"
rm "$MNT/filler"
snapshot after_full
mount -o remount,ro "$MNT"
cli_named q_ro quantize --model "$ONNX" --parity-limit 0 "$MNT/int8-c"
cli_named r_ro run "$RECIPE2" --out "$MNT/runs"
snapshot after_ro
"""


def test_a_full_disk_or_a_read_only_target_fails_in_one_line_and_leaves_the_previous_state(tmp_path, tiny_onnx_model):
    _, onnx = tiny_onnx_model
    data = write_squad(tmp_path / "dev.json", TOY_QAS)
    head = f"name: r\nmodel: {tiny_onnx_model[0]}\neval: {{data: {data}}}\nparity: {{limit: 2}}\nsteps:\n"
    recipe1 = tmp_path / "r1.yaml"
    recipe1.write_text(head + "  - export: {name: onnx}\n")
    recipe2 = tmp_path / "r2.yaml"  # the same run, one step further
    recipe2.write_text(head + "  - export: {name: onnx}\n  - quantize: {name: int8, from: onnx}\n")
    mnt, res = tmp_path / "mnt", tmp_path / "results"
    mnt.mkdir()
    res.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MNT": str(mnt), "RES": str(res),
           "PY": sys.executable, "ONNX": str(onnx), "RECIPE1": str(recipe1), "RECIPE2": str(recipe2)}  # fmt: skip
    done = subprocess.run(["unshare", "-m", "bash", "-c", SCRIPT],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    def outcome(name: str) -> tuple[int, str]:
        return int((res / f"{name}.rc").read_text()), (res / f"{name}.err").read_text()

    assert outcome("q0")[0] == 0 and outcome("r0")[0] == 0, (outcome("q0"), outcome("r0"))
    before = (res / "before.sums").read_text()
    assert "./int8/model.onnx" in before and "./runs/r/models/onnx/step.json" in before
    for name, target, why in (
        ("q_full", mnt / "int8-b", "no space left on device"),  # a new folder: int8 itself is made, and reused
        ("r_full", mnt / "runs" / "r" / "models" / "int8", "no space left on device"),
        ("q_ro", mnt / "int8-c", "read-only file system"),
        ("r_ro", mnt / "runs" / "r", "read-only file system"),
    ):
        code, err = outcome(name)
        errors = [line for line in err.splitlines() if line.startswith("edgeqa: error:")]
        assert code == 2 and len(errors) == 1, (name, err[-2000:])
        assert f"edgeqa: error: {target}: " in errors[0] and why in errors[0].lower(), (name, errors)
        assert "Traceback" not in err, (name, err[-2000:])
    # Every file as it was: nothing half-written, no temporary, the finished export and int8 model untouched.
    assert (res / "after_full.sums").read_text() == before
    assert (res / "after_ro.sums").read_text() == before
    assert before.count("\n") > 5
