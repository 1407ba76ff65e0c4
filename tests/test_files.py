"""Writing and reading files safely: atomic exclusive writes, safe loads, the run folder's lock."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from sagan_tutorial import files
from sagan_tutorial.files import (
    RunExistsError,
    RunFolderBusyError,
    RunLock,
    atomic_write,
    claim_run_folder,
    clear_run,
    first_non_finite,
    read_torch_file,
)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.bin"
    atomic_write(path, b"old")

    def full_disk(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_planted_symlink_is_never_followed(tmp_path, monkeypatch):
    """The temporary name is random and created with O_EXCL: a link planted at the old,
    predictable name (or at any name) cannot redirect the write to another file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    for name in (f".checkpoint.pt.{os.getpid()}.tmp", ".checkpoint.pt.tmp"):
        (out / name).symlink_to(victim)
    names = []
    real_mkstemp = files.tempfile.mkstemp

    def recording_mkstemp(**kwargs):
        descriptor, name = real_mkstemp(**kwargs)
        names.append(name)
        return descriptor, name

    monkeypatch.setattr(files.tempfile, "mkstemp", recording_mkstemp)
    atomic_write(out / "checkpoint.pt", b"checkpoint")
    atomic_write(out / "checkpoint.pt", b"checkpoint 2")
    assert victim.read_text() == "precious"
    assert not (out / "checkpoint.pt").is_symlink()
    assert (out / "checkpoint.pt").read_bytes() == b"checkpoint 2"
    assert len(set(names)) == 2  # a new random name each time


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out.pt").symlink_to(victim)
    atomic_write(tmp_path / "out.pt", b"new")
    assert victim.read_text() == "precious" and not (tmp_path / "out.pt").is_symlink()


def test_no_overwrite_refuses_an_existing_name_even_a_dangling_link(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write(path, b"old")
    with pytest.raises(FileExistsError):
        atomic_write(path, b"new", overwrite=False)
    (tmp_path / "b.bin").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        atomic_write(tmp_path / "b.bin", b"new", overwrite=False)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]
    atomic_write(tmp_path / "c.bin", b"fresh", overwrite=False)
    assert (tmp_path / "c.bin").read_bytes() == b"fresh"


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_read_torch_file_refuses_code_and_junk_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        read_torch_file(tmp_path / "absent.pt")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Payload()))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(100))
    for path in (evil, junk):
        with pytest.raises(ValueError) as info:
            read_torch_file(path, "pretrained generator")
        message = str(info.value)
        assert str(path) in message and "weights_only=True" in message
        assert "weights_only=False" not in message and "\n" not in message
    assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")


def test_first_non_finite_names_the_tensor():
    state = {"a": {"w": torch.ones(2)}, "b": [torch.zeros(1), torch.tensor([1.0, float("nan")])]}
    assert first_non_finite(state) == "b.1"
    assert first_non_finite({"i": torch.tensor([1, 2]), "f": torch.ones(3)}) is None
    assert first_non_finite({"x": torch.tensor([float("inf")])}) == "x"


def test_a_run_lock_keeps_a_second_writer_out(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderBusyError, match=rf"process {os.getpid()}\) is using"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # free again once released


def test_claim_refuses_a_folder_with_a_run_and_sweeps_only_its_own_temporary_files(tmp_path):
    out = tmp_path / "run"
    claim_run_folder(out, resume=False, overwrite=False).release()  # empty: fine
    (out / "log.csv").write_text("step\n")
    (out / "samples").mkdir()
    (out / "notes.txt").write_text("mine")
    (out / ".draft.tmp").write_text("mine too")  # hidden, .tmp, but not a name the package makes
    (out / ".checkpoint.pt.a1b2c3d4.tmp").write_bytes(b"left by a killed run")
    (out / "samples" / ".step_000250.png.zz_9x8y7.tmp").write_bytes(b"left by a killed run")
    with pytest.raises(RunExistsError, match=r"holds a run \(log.csv, samples\).*--resume"):
        claim_run_folder(out, resume=False, overwrite=False)
    assert (out / ".checkpoint.pt.a1b2c3d4.tmp").exists()  # a refused start touches nothing
    claim_run_folder(out, resume=True, overwrite=False).release()
    assert not (out / ".checkpoint.pt.a1b2c3d4.tmp").exists()
    assert not (out / "samples" / ".step_000250.png.zz_9x8y7.tmp").exists()
    assert (out / ".draft.tmp").read_text() == "mine too" and (out / "log.csv").exists()


def test_clear_run_removes_what_a_run_wrote_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    (out / "samples").mkdir(parents=True)
    (out / "tensorboard").mkdir()
    for name in ("checkpoint.pt", "log.csv", "replicas.txt", "notes.txt"):
        (out / name).write_text(name)
    for name in ("step_000000.png", "step_000250.png", "my-picture.png"):
        (out / "samples" / name).write_text(name)
    (out / "tensorboard" / "events.out.tfevents.1.host").write_text("e")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "step_000000.png").write_text("not this run's")
    clear_run(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "samples"]
    assert [p.name for p in (out / "samples").iterdir()] == ["my-picture.png"]
    (out / "samples" / "my-picture.png").unlink()
    (out / "samples").rmdir()
    (out / "samples").symlink_to(elsewhere)  # a link is removed, never followed
    clear_run(out)
    assert not (out / "samples").exists() and (elsewhere / "step_000000.png").exists()


def test_claim_does_not_touch_a_folder_another_run_holds(tmp_path):
    out = tmp_path / "run"
    with claim_run_folder(out, resume=False, overwrite=False):
        (out / ".checkpoint.pt.live.tmp").write_bytes(b"being written")
        with pytest.raises(RunFolderBusyError):
            claim_run_folder(out, resume=False, overwrite=True)
        assert (out / ".checkpoint.pt.live.tmp").exists()  # the other run's file survives
