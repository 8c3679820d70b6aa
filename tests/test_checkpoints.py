"""Training checkpoints and the teacher-logit cache: what they bring back, what they refuse, and how a cut-short
pass resumes (step records and the bench step's caches: test_records.py)."""

from __future__ import annotations

import hashlib
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgeqa.bench.files import EdgeQAError
from edgeqa.bench.qa import QAConfig
from edgeqa.compress.checkpoint import gather_rng, load_checkpoint, restore, save_checkpoint
from edgeqa.compress.trainset import (
    TrainSet,
    _file_digest,
    _folder_digest,
    build_cache,
    cache_folder,
    cache_key,
    check_cache,
)

# --- training checkpoints ------------------------------------------------------------------------------------------


def _trainee(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


ONE = SimpleNamespace(rank=0, world=1, device="cpu")


def test_a_checkpoint_brings_back_weights_optimiser_schedule_and_rng(tmp_path):
    model, opt, sched = _trainee()
    record = {"steps": 10, "layers": (1, 2)}  # a tuple, as in a config: JSON turns it into a list
    torch.manual_seed(7)
    rngs = gather_rng(ONE)
    assert len(rngs) == 1 and rngs[0]["cuda"] is None and torch.equal(rngs[0]["cpu"], torch.get_rng_state())
    after_save = torch.rand(3)
    save_checkpoint(tmp_path / "ckpt.pt", record, model, opt, sched, stage=1, step=5, best=0.5, history=[1],
                    starts=2, seconds=3.0, rngs=rngs, extra={"hook": 1})  # fmt: skip
    state = load_checkpoint(tmp_path / "ckpt.pt", {"steps": 10, "layers": [1, 2]})
    assert state["config"] == {"steps": 10, "layers": [1, 2]}
    assert (state["stage"], state["step"], state["best"], state["history"], state["starts"], state["seconds"],
            state["hooks"]) == (1, 5, 0.5, [1], 2, 3.0, {"hook": 1})  # fmt: skip
    fresh, fresh_opt, fresh_sched = _trainee(seed=1)
    torch.manual_seed(99)
    restore(state, fresh, fresh_opt, fresh_sched, ONE)
    assert torch.equal(torch.rand(3), after_save)  # the RNG continues where it was saved
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    assert fresh_sched.last_epoch == sched.last_epoch == 1 and fresh_opt.param_groups[0]["lr"] == pytest.approx(0.05)
    momentum = fresh_opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, opt.state_dict()["state"][0]["momentum_buffer"])
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary file


def test_a_stage_boundary_checkpoint_restores_only_the_weights(tmp_path):
    model, _, _ = _trainee()
    save_checkpoint(tmp_path / "c.pt", {}, model, None, None, 2, 0, None, [], 1, 0.0, None)
    state = load_checkpoint(tmp_path / "c.pt", {})
    assert state["optimizer"] is None and state["scheduler"] is None and state["rng"] is None
    fresh, opt, sched = _trainee(seed=1)
    before = opt.state_dict()
    torch.manual_seed(5)
    restore(state, fresh, opt, sched, ONE)  # the new stage's optimiser and RNG start fresh
    assert torch.equal(fresh.weight, model.weight)
    assert opt.state_dict() == before and torch.equal(torch.rand(2), torch.manual_seed(5) and torch.rand(2))


def test_checkpoints_of_other_settings_or_unreadable_are_refused(tmp_path):
    model, opt, sched = _trainee()
    save_checkpoint(tmp_path / "c.pt", {"steps": 10}, model, opt, sched, 0, 1, None, [], 1, 0.0, gather_rng(ONE))
    with pytest.raises(EdgeQAError, match=r"c.pt: checkpoint of a run with other settings; delete it"):
        load_checkpoint(tmp_path / "c.pt", {"steps": 11})
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeQAError, match=r"bad.pt: unreadable checkpoint \(.*\); delete it to start over"):
        load_checkpoint(tmp_path / "bad.pt", {"steps": 10})


def test_each_process_takes_its_own_rng_and_the_process_count_must_match(tmp_path):
    model, opt, sched = _trainee()
    torch.manual_seed(1)
    first = torch.get_rng_state()
    torch.manual_seed(2)
    second = torch.get_rng_state()
    expected = torch.rand(4)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "rng": [{"cpu": first, "cuda": None}, {"cpu": second, "cuda": None}]}  # fmt: skip
    restore(state, model, opt, sched, SimpleNamespace(rank=1, world=2, device="cpu"))
    assert torch.equal(torch.rand(4), expected)
    with pytest.raises(EdgeQAError, match="checkpoint was saved by 2 processes; resume it with as many"):
        restore(state, model, opt, sched, ONE)


# --- the teacher-logit cache ---------------------------------------------------------------------------------------


def _teacher_folder(folder):
    folder.mkdir()
    for name, text in (("model.safetensors", "w1"), ("config.json", "{}"), ("vocab.txt", "a"), ("step.json", "{}"),
                       ("training.json", "{}"), ("notes.md", "x")):  # fmt: skip
        (folder / name).write_text(text)
    return folder


def _trainset(tmp_path, lengths=(5, 4, 3, 2)):
    data = tmp_path / "train.json"
    if not data.exists():
        data.write_text('{"data": []}')
    ids = [np.arange(1, n + 1, dtype=np.int32) * (i + 1) for i, n in enumerate(lengths)]
    n = len(lengths)
    return TrainSet(ids, None, np.zeros((n, 2), dtype=np.int64), np.arange(n), n, str(data), None)


def test_file_and_folder_digests_follow_the_weights_config_and_tokenizer(tmp_path):
    teacher = _teacher_folder(tmp_path / "t")
    assert _file_digest(teacher / "vocab.txt") == hashlib.sha256(b"a").hexdigest()
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 5000)  # more than one block of reading
    assert _file_digest(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    first = _folder_digest(teacher)
    for name in ("step.json", "training.json", "notes.md"):  # records and notes are not the model
        (teacher / name).write_text("changed")
    assert _folder_digest(teacher) == first
    for name in ("model.safetensors", "config.json", "vocab.txt"):
        (teacher / name).write_text("changed")
        assert _folder_digest(teacher) != first, name
        first = _folder_digest(teacher)
    (teacher / "vocab.txt").rename(teacher / "merges.txt")  # the same bytes under another name
    assert _folder_digest(teacher) != first
    first = _folder_digest(teacher)
    for suffix in (".bin", ".model"):
        (teacher / f"extra{suffix}").write_text("w")
        assert _folder_digest(teacher) != first, suffix
        first = _folder_digest(teacher)


def test_the_cache_key_and_folder_follow_teacher_data_and_settings(tmp_path):
    teacher, trainset, cfg = _teacher_folder(tmp_path / "t"), _trainset(tmp_path), QAConfig(max_length=64,
                                                                                            doc_stride=16)  # fmt: skip
    key = cache_key(teacher, trainset, cfg, "fp32")
    assert key == {"teacher": str(teacher), "teacher_digest": _folder_digest(teacher), "data": trainset.source,
                   "data_digest": hashlib.sha256(b'{"data": []}').hexdigest(), "limit": None, "max_length": 64,
                   "doc_stride": 16, "windows": 4, "precision": "fp32"}  # fmt: skip
    folder = cache_folder(tmp_path / "cache", key)
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("teacher-logits-")
    assert len(folder.name) == len("teacher-logits-") + 16
    assert cache_folder(tmp_path / "cache", {**key, "teacher": "/elsewhere", "data": "/moved"}) == folder
    assert cache_folder(tmp_path / "cache", dict(reversed(key.items()))) == folder  # the same key in another order
    for change in ({"precision": "bf16"}, {"teacher_digest": "0"}, {"limit": 5}, {"doc_stride": 8}):
        assert cache_folder(tmp_path / "cache", {**key, **change}) != folder, change


def test_a_cache_of_other_settings_is_refused_and_an_unfinished_one_is_not_done(tmp_path):
    key = {"teacher": "/t", "data": "/d", "teacher_digest": "aa", "max_length": 64, "precision": "fp32"}
    folder = tmp_path / "c"
    assert check_cache(folder, key) is False  # nothing there
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({**key, "teacher": "/moved", "data": "/moved"}))
    assert check_cache(folder, key) is False  # settings agree, but no logits.npy yet
    np.save(folder / "logits.npy", np.zeros((1, 2, 64), dtype=np.float16))
    assert check_cache(folder, key) is True
    (folder / "meta.json").write_text(json.dumps({**key, "teacher_digest": "bb", "precision": "bf16"}))
    with pytest.raises(EdgeQAError, match=r"c: teacher cache was built with other settings \(teacher_digest: cache "
                       r"has 'bb', this run 'aa'; precision: cache has 'bf16', this run 'fp32'\)"):  # fmt: skip
        check_cache(folder, key)


def _fake_teacher(calls):
    def run(inputs):
        ids = inputs["input_ids"].astype(np.float32)
        calls.append(inputs["input_ids"].shape)
        return ids, -ids

    return run


def test_the_cache_holds_each_windows_logits_and_is_reused(tmp_path):
    trainset = _trainset(tmp_path)
    key = {"max_length": 8, "windows": 4, "precision": "fp32"}
    calls = []
    logits = build_cache(tmp_path / "c", key, trainset, _fake_teacher(calls), pad_id=0, batch_size=3, progress=False)
    assert calls == [(3, 5), (1, 2)]  # longest windows first, padded to the batch's longest
    assert logits.shape == (4, 2, 8) and logits.dtype == np.float16
    for i, ids in enumerate(trainset.input_ids):  # window i: its own ids as start logits, their negatives as end
        n = len(ids)
        assert logits[i, 0, :n].tolist() == ids.tolist() and logits[i, 1, :n].tolist() == (-ids).tolist()
        assert not logits[i, :, n:].any()  # zero past the window, padding of the batch included
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["logits.npy", "meta.json"]
    assert json.loads((tmp_path / "c" / "meta.json").read_text()) == key
    again = build_cache(tmp_path / "c", key, trainset, _fake_teacher(calls), pad_id=0, batch_size=3, progress=False)
    assert len(calls) == 2 and np.array_equal(again, logits)


def test_an_interrupted_cache_pass_resumes_after_its_last_saved_batch(tmp_path):
    trainset, folder = _trainset(tmp_path), tmp_path / "c"
    key = {"max_length": 8, "windows": 4, "precision": "fp32"}
    folder.mkdir()
    partial = np.lib.format.open_memmap(folder / "logits.partial.npy", mode="w+", dtype=np.float16, shape=(4, 2, 8))
    partial[:] = 7  # what the first pass wrote for batch 0 (windows 0 and 1 at batch size 2)
    partial.flush()
    del partial
    (folder / "progress.json").write_text(json.dumps({"key": key, "done": 1}))
    calls = []
    logits = build_cache(folder, key, trainset, _fake_teacher(calls), pad_id=0, batch_size=2, progress=False)
    assert calls == [(2, 3)]  # only batch 1: windows 2 and 3
    assert (logits[:2] == 7).all() and logits[2, 0, :3].tolist() == trainset.input_ids[2].tolist()
    # Progress of a pass with another key is not resumed: every batch runs again.
    (folder / "logits.npy").unlink()
    (folder / "meta.json").unlink()
    np.save(folder / "logits.partial.npy", np.full((4, 2, 8), 7, dtype=np.float16))
    (folder / "progress.json").write_text(json.dumps({"key": {**key, "precision": "bf16"}, "done": 1}))
    calls.clear()
    logits = build_cache(folder, key, trainset, _fake_teacher(calls), pad_id=0, batch_size=2, progress=False)
    assert calls == [(2, 5), (2, 3)] and logits[0, 0, :5].tolist() == trainset.input_ids[0].tolist()


def test_a_pass_cut_short_saves_progress_every_50_batches_and_resumes_there(tmp_path, capfd):
    trainset, folder = _trainset(tmp_path, lengths=[3] * 60), tmp_path / "c"  # 60 batches of one window
    key = {"max_length": 4, "windows": 60, "precision": "fp32"}
    calls = []

    def dies_at_56(inputs):
        if len(calls) == 55:
            raise KeyboardInterrupt  # killed during batch 56
        return _fake_teacher(calls)(inputs)

    with pytest.raises(KeyboardInterrupt):
        build_cache(folder, key, trainset, dies_at_56, pad_id=0, batch_size=1, progress=False)
    assert json.loads((folder / "progress.json").read_text()) == {"key": key, "done": 50}
    assert not (folder / "logits.npy").exists() and not (folder / "meta.json").exists()
    calls.clear()
    logits = build_cache(folder, key, trainset, _fake_teacher(calls), pad_id=0, batch_size=1, progress=False)
    assert len(calls) == 10  # batches 51 to 60 only
    assert [logits[i, 0, :3].tolist() for i in (0, 49, 50, 59)] == [trainset.input_ids[i].tolist() for i in
                                                                     (0, 49, 50, 59)]  # fmt: skip
    assert not (folder / "progress.json").exists()
    assert capfd.readouterr().err == ""  # progress=False: no bar
    again = build_cache(folder, key, trainset, _fake_teacher(calls), pad_id=0, batch_size=1, progress=False)
    assert isinstance(again, np.memmap)  # read from disk as needed, not loaded whole


def test_the_teacher_runs_64_windows_at_a_time_by_default(tmp_path):
    trainset = _trainset(tmp_path, lengths=[2] * 70)
    calls = []
    build_cache(tmp_path / "c", {"max_length": 4}, trainset, _fake_teacher(calls), pad_id=0, progress=False)
    assert calls == [(64, 2), (6, 2)]


def test_a_cache_folder_is_made_with_its_parents_and_stray_progress_is_ignored(tmp_path):
    trainset, key = _trainset(tmp_path), {"max_length": 8}
    folder = tmp_path / "runs" / "cache" / "teacher-logits-x"  # none of these exist yet
    folder.mkdir(parents=True)
    (folder / "progress.json").write_text(json.dumps({"key": key, "done": 1}))  # but no partial logits
    calls = []
    build_cache(folder, key, trainset, _fake_teacher(calls), pad_id=0, batch_size=2, progress=False)
    assert len(calls) == 2  # both batches: progress without its logits means nothing
    calls.clear()
    build_cache(tmp_path / "a" / "b" / "c", key, trainset, _fake_teacher(calls), pad_id=0, batch_size=2,
                progress=False)  # fmt: skip
    assert len(calls) == 2 and (tmp_path / "a" / "b" / "c" / "logits.npy").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    np.save(broken / "logits.partial.npy", np.zeros((4, 2, 8), dtype=np.float16))
    (broken / "progress.json").write_bytes(b"\xff\xfe")
    with pytest.raises(EdgeQAError, match="broken/progress.json: teacher cache progress is not UTF-8 text"):
        build_cache(broken, key, trainset, _fake_teacher(calls), pad_id=0, batch_size=2, progress=False)


def test_the_cache_pass_shows_a_bar_that_resumes_where_the_last_pass_stopped(tmp_path, capfd, caplog):
    trainset, folder = _trainset(tmp_path), tmp_path / "c"
    key = {"max_length": 8, "windows": 4, "precision": "fp32"}
    folder.mkdir()
    np.save(folder / "logits.partial.npy", np.zeros((4, 2, 8), dtype=np.float16))
    (folder / "progress.json").write_text(json.dumps({"key": key, "done": 1}))
    logits = build_cache(folder, key, trainset, _fake_teacher([]), pad_id=0, batch_size=2)  # a bar by default
    bar = capfd.readouterr().err
    assert "teacher logits:" in bar and " 1/2 " in bar and " 2/2 " in bar and "batch/s" in bar, bar
    assert isinstance(logits, np.memmap)  # read from disk as needed, also when just made
    with caplog.at_level(logging.INFO):
        build_cache(folder, key, trainset, _fake_teacher([]), pad_id=0, batch_size=2)
    assert f"teacher logits: reusing {folder}" in [r.getMessage() for r in caplog.records]
