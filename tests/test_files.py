"""bench.files in-process: settings checked by name and type, JSON read with one-line errors, output folders checked
before work and removed after a failure, and the atomic writers' temporaries (test_writes covers failing writes)."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import Optional

import pytest

from edgeqa.bench.files import (
    TEMPORARY,
    EdgeQAError,
    atomic_dir,
    atomic_file,
    check_field_types,
    check_writable_dir,
    known_fields,
    read_json,
    removed_on_failure,
    write_json,
)


@dataclass(frozen=True)
class Settings:
    count: int = 1
    rate: float = 0.5
    on: bool = False
    name: str = "x"
    sizes: tuple[int, ...] = (1,)
    maybe: float | None = None


def test_unknown_settings_are_refused_by_name_with_the_allowed_ones():
    assert known_fields(Settings, {"count": 2}, "demo") == {"count": 2}
    with pytest.raises(EdgeQAError) as e:
        known_fields(Settings, {"turbo": 1, "count": 2, "alpha": 0}, "demo")
    assert str(e.value) == "unknown demo setting(s): alpha, turbo (allowed: count, maybe, name, on, rate, sizes)"


@pytest.mark.parametrize(
    ("field", "value", "fits"),
    [("count", 3, True), ("count", True, False), ("count", 3.0, False), ("rate", 1, True), ("rate", 0.25, True),
     ("rate", False, False), ("rate", "0.5", False), ("on", True, True), ("on", 1, False), ("name", "y", True),
     ("name", 1, False), ("sizes", [1, 2], True), ("sizes", (1, 2), True), ("sizes", (1, "2"), False),
     ("sizes", 1, False), ("maybe", None, True), ("maybe", 2, True), ("maybe", "no", False), ("count", None, False)],
)  # fmt: skip
def test_a_settings_type_is_checked_as_a_recipe_writes_it(field, value, fits):
    """bool is not a number, an int is a float, a list passes as a tuple whose items fit, None only where allowed."""
    settings = Settings(**{field: value})
    if fits:
        check_field_types(settings, "demo")
    else:
        with pytest.raises(EdgeQAError, match=rf"^demo\.{field} should be "):
            check_field_types(settings, "demo")


def test_the_type_error_names_the_type_as_a_reader_writes_it():
    with pytest.raises(EdgeQAError) as e:
        check_field_types(Settings(rate="fast"), "demo")
    assert str(e.value) == "demo.rate should be float, got 'fast'"
    with pytest.raises(EdgeQAError) as e:
        check_field_types(Settings(maybe="no"), "demo")
    assert str(e.value) == "demo.maybe should be float | None, got 'no'"
    with pytest.raises(EdgeQAError) as e:
        check_field_types(Settings(sizes=("a",)), "demo")
    assert str(e.value) == "demo.sizes should be tuple[int, ...], got ('a',)"


def test_json_is_read_plain_or_gzipped(tmp_path):
    (tmp_path / "a.json").write_text('{"é": [1, 2]}', encoding="utf-8")
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(b'{"x": 1}'))
    (tmp_path / "c.json").write_bytes(gzip.compress(b'{"y": 2}'))  # gzipped whatever its name
    assert read_json(tmp_path / "a.json") == {"é": [1, 2]}
    assert read_json(tmp_path / "b.json.gz") == {"x": 1} and read_json(tmp_path / "c.json") == {"y": 2}


def test_each_way_a_json_file_can_fail_is_one_line_naming_it(tmp_path):
    def error(path, what="SQuAD file"):
        with pytest.raises(EdgeQAError) as e:
            read_json(path, what)
        return str(e.value)

    assert error(tmp_path / "none.json") == f"{tmp_path / 'none.json'}: no such SQuAD file"
    assert error(tmp_path) == f"{tmp_path}: is a folder, expected a SQuAD file"
    (tmp_path / "bad.json").write_text('{"a": 1,\n "b": }')
    assert error(tmp_path / "bad.json") == (
        f"{tmp_path / 'bad.json'}: malformed JSON at line 2, column 7: Expecting value"
    )
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xe9"}')
    assert error(tmp_path / "latin.json") == (
        f"{tmp_path / 'latin.json'}: SQuAD file is not UTF-8 text (invalid continuation byte at byte 7)"
    )
    (tmp_path / "cut.json.gz").write_bytes(gzip.compress(b'{"a": 1}')[:12])
    assert error(tmp_path / "cut.json.gz").startswith(f"{tmp_path / 'cut.json.gz'}: cannot read SQuAD file: ")
    assert error(tmp_path / "none.json", "JSON file") == f"{tmp_path / 'none.json'}: no such JSON file"


def test_an_unreadable_json_file_says_permission_denied(tmp_path, monkeypatch):
    """(Simulated: the suite runs as root in CI, and root reads any file.)"""
    from edgeqa.bench import files

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    (tmp_path / "secret.json").write_text("{}")
    monkeypatch.setattr(files, "open", denied, raising=False)
    with pytest.raises(EdgeQAError) as e:
        read_json(tmp_path / "secret.json")
    assert str(e.value) == f"{tmp_path / 'secret.json'}: cannot read JSON file: permission denied"


def test_written_json_is_indented_utf8_with_a_final_newline(tmp_path):
    write_json(tmp_path / "sub" / "x.json", {"name": "café", "n": [1]})
    assert (tmp_path / "sub" / "x.json").read_bytes() == '{\n  "name": "café",\n  "n": [\n    1\n  ]\n}\n'.encode()


def test_an_output_folder_is_checked_before_any_work(tmp_path):
    assert check_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgeQAError, match=r"file: output path exists and is not a folder$"):
        check_writable_dir(tmp_path / "file")
    with pytest.raises(EdgeQAError, match=r"file/sub: cannot create output folder: Not a directory$"):
        check_writable_dir(tmp_path / "file" / "sub")


def test_a_failure_removes_the_folders_it_made_and_only_those(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), removed_on_failure(tmp_path / "kept" / "new" / "deeper"):
        (tmp_path / "kept" / "new" / "deeper").mkdir(parents=True)
        raise RuntimeError("failed")
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "new").exists()
    with removed_on_failure(tmp_path / "fine"):
        (tmp_path / "fine").mkdir()
    assert (tmp_path / "fine").is_dir()
    with pytest.raises(KeyboardInterrupt), removed_on_failure(tmp_path / "kept"):  # existed before: stays
        raise KeyboardInterrupt
    assert (tmp_path / "kept").is_dir()


def test_temporaries_sit_beside_their_target_named_after_it_and_their_writer(tmp_path):
    with atomic_file(tmp_path / "out.json") as tmp:
        assert tmp.parent == tmp_path and oct(tmp.stat().st_mode & 0o777) == "0o644"
        match = TEMPORARY.match(tmp.name)
        assert match["target"] == "out.json" and int(match["pid"]) == os.getpid()
        tmp.write_text("new")
    assert (tmp_path / "out.json").read_text() == "new" and not tmp.exists()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.bin").write_text("old")
    with atomic_dir(tmp_path / "model") as tmp:
        assert tmp.parent == tmp_path and oct(tmp.stat().st_mode & 0o777) == "0o755"
        assert TEMPORARY.match(tmp.name)["target"] == "model"
        (tmp / "new.bin").write_text("new")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["new.bin"]  # replaced whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out.json"]  # nothing else left
    (tmp_path / "plain").write_text("x")
    with (
        pytest.raises(EdgeQAError, match=r"plain: output path exists and is not a folder$"),
        atomic_dir(tmp_path / "plain"),
    ):
        pass


# --- telling a failed write as one line, and the checks around it --------------------------------------------------


def test_which_failures_are_write_failures_and_how_each_is_told(tmp_path, monkeypatch):
    import errno

    from edgeqa.bench import files

    target, tmp = tmp_path / "model", tmp_path / ".model.1.abcd1234.tmp"
    monkeypatch.setattr(files, "_out_of_space", lambda folder: False)
    full = OSError(errno.ENOSPC, "No space left on device", "/anywhere")
    assert str(files._write_error(full, target, tmp)) == f"{target}: cannot write: No space left on device"
    ours = OSError(errno.EROFS, "Read-only file system", str(tmp / "model.onnx"))
    assert str(files._write_error(ours, target, tmp)) == f"{target}: cannot write: Read-only file system"
    theirs = OSError(errno.EACCES, "Permission denied", str(tmp_path / "input.json"))  # reading an input failed
    assert files._write_error(theirs, target, tmp) is None
    assert files._write_error(OSError(errno.EACCES, "Permission denied"), target, tmp) is None  # no file named
    assert files._write_error(OSError(errno.ENOENT, "No such file", str(tmp)), target, tmp) is None
    assert files._write_error(RuntimeError("protobuf: truncated"), target, tmp) is None
    assert files._write_error(EdgeQAError("told already"), target, tmp) is None
    monkeypatch.setattr(files, "_out_of_space", lambda folder: folder == tmp_path)
    told = files._write_error(RuntimeError("  protobuf: truncated\nsecond line"), target, tmp)
    assert str(told) == f"{target}: cannot write: No space left on device (RuntimeError: protobuf: truncated)"
    assert str(files._write_error(ValueError(""), target, tmp)) == (
        f"{target}: cannot write: No space left on device (ValueError: )")  # fmt: skip
    assert files._write_error(EdgeQAError("told already"), target, tmp) is None


def test_a_temporary_is_named_after_what_it_becomes():
    from pathlib import Path

    from edgeqa.bench.files import _final

    assert _final(Path("/r/.model.onnx.12.abcd1234.tmp")) == Path("/r/model.onnx")
    assert _final(Path("/r/..onnx.3.abcd1234.tmp.45.zz99yy88.tmp")) == Path("/r/onnx")  # a temporary's temporary
    assert _final(Path("/r/model.onnx")) == Path("/r/model.onnx")


def test_a_disk_is_full_below_256_kib_free(monkeypatch, tmp_path):
    import types

    from edgeqa.bench import files

    def statvfs(free):
        return lambda folder: types.SimpleNamespace(f_bavail=free // 4096, f_frsize=4096)

    monkeypatch.setattr(files.os, "statvfs", statvfs(256 * 1024))
    assert not files._out_of_space(tmp_path)  # exactly 256 KiB: not yet
    monkeypatch.setattr(files.os, "statvfs", statvfs(256 * 1024 - 4096))
    assert files._out_of_space(tmp_path)

    def gone(folder):
        raise FileNotFoundError(folder)

    monkeypatch.setattr(files.os, "statvfs", gone)
    assert not files._out_of_space(tmp_path)


def test_a_writer_is_alive_while_its_process_runs(monkeypatch):
    import subprocess
    import sys

    from edgeqa.bench import files

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert files._alive(child.pid)
        with pytest.raises(subprocess.TimeoutExpired):  # asked, not signalled: it sleeps on
            child.wait(timeout=0.5)
    finally:
        child.kill()
        child.wait()
    assert not files._alive(child.pid)

    def foreign(pid, signal):
        raise PermissionError("another user's process")

    monkeypatch.setattr(files.os, "kill", foreign)
    assert files._alive(12345)


def test_stale_temporaries_are_looked_for_below_only_when_asked(tmp_path, caplog):
    import subprocess
    import sys

    gone = int(subprocess.run([sys.executable, "-c", "print(__import__('os').getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip
    (tmp_path / "sub").mkdir()
    deep = tmp_path / "sub" / f".a.{gone}.abcd1234.tmp"
    deep.write_text("x")
    top = tmp_path / f".b.{gone}.abcd1234.tmp"
    top.mkdir()
    from edgeqa.bench.files import remove_stale_temporaries

    caplog.set_level("INFO", logger="edgeqa.bench.files")
    assert remove_stale_temporaries(tmp_path, recursive=False) == [top] and deep.exists()
    assert [r.getMessage() for r in caplog.records] == [f"removed 1 temporaries left by killed runs under {tmp_path}"]
    assert remove_stale_temporaries(tmp_path) == [deep] and not deep.exists()
    assert remove_stale_temporaries(tmp_path / "none") == []


def test_a_folder_that_cannot_be_written_is_named_with_the_reason(tmp_path, monkeypatch):
    """(Simulated: the suite runs as root, which writes anywhere; test_writes mounts a real read-only file system.)"""
    import types

    from edgeqa.bench import files

    (tmp_path / "out").mkdir()
    assert check_writable_dir(tmp_path / "out") == tmp_path / "out"  # an existing folder is fine
    monkeypatch.setattr(files.os, "access", lambda path, mode: mode != os.W_OK | os.X_OK)
    for flag, why in ((os.ST_RDONLY, "read-only file system"), (0, "permission denied")):
        monkeypatch.setattr(files.os, "statvfs", lambda path, flag=flag: types.SimpleNamespace(f_flag=flag)
                            if path == tmp_path / "out" else pytest.fail(f"statvfs({path})"))  # fmt: skip
        with pytest.raises(EdgeQAError) as e:
            check_writable_dir(tmp_path / "out")
        assert str(e.value) == f"{tmp_path / 'out'}: output folder is not writable ({why})"
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgeQAError) as e:
        check_writable_dir(tmp_path / "file")
    assert str(e.value) == f"{tmp_path / 'file'}: output path exists and is not a folder"


@dataclass(frozen=True)
class Outer:
    inner: Settings = Settings()
    table: dict | None = None
    old_style: Optional[int] = None  # noqa: UP045 (how a hint reads when typing names it)


def test_nested_settings_and_typing_names_read_as_written():
    check_field_types(Outer(inner=Settings(), table={"a": 1}), "outer")  # nested configs check themselves
    with pytest.raises(EdgeQAError) as e:
        check_field_types(Outer(old_style="a"), "outer")
    assert str(e.value) == "outer.old_style should be Optional[int], got 'a'"
