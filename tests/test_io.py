"""Output files: atomic replacement, ownership by manifest, concurrent writers, interrupts."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal

import pytest

from spinformer import _io
from spinformer._io import MANIFEST_NAME, atomic_write, check_output_dir, write_output_dir

_fork = multiprocessing.get_context("fork")


def _listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_atomic_write_replaces_the_whole_file_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    atomic_write(target, "old")
    os.chmod(target, 0o640)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o640

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "never")
    assert target.read_text() == "new" and _listing(tmp_path) == ["a.txt"]


def test_refuses_what_spinformer_did_not_write(tmp_path):
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match=r"out_dir .* non-empty directory .*thesis\.tex"):
        write_output_dir(user_dir, {"index.html": "x"}, command="test")
    assert _listing(user_dir) == ["thesis.tex"]

    user_file = tmp_path / "notes.txt"
    user_file.write_text("precious")
    with pytest.raises(ValueError, match=r"out_dir must be a directory.*existing file"):
        write_output_dir(user_file, {"index.html": "x"}, command="test")
    with pytest.raises(ValueError, match=r"cannot be created.*is not a directory"):
        check_output_dir(user_file / "sub", "--out")
    assert user_file.read_text() == "precious"
    assert _listing(tmp_path) == ["mine", "notes.txt"]  # nothing hidden, renamed or added
    with pytest.raises(ValueError, match="plain file names"):
        write_output_dir(tmp_path / "new", {"../escape.txt": "x"}, command="test")
    assert not (tmp_path / "new").exists()


def test_removes_only_its_own_stale_files(tmp_path):
    out = tmp_path / "out"
    write_output_dir(out, {"a.png": b"\x89PNG", "results.json": "{}"}, command="first")
    (out / "readme.txt").write_text("the user's")
    write_output_dir(out, {"results.json": '{"v": 2}'}, command="second")
    assert _listing(out) == [MANIFEST_NAME, "readme.txt", "results.json"]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["files"] == ["results.json"] and manifest["command"] == "second"
    # an empty directory is fine; a hand-edited manifest never makes spinformer delete elsewhere
    (out / MANIFEST_NAME).write_text(
        json.dumps({"files": ["../victim", "readme.txt/..", "results.json"]})
    )
    (tmp_path / "victim").write_text("keep")
    write_output_dir(out, {"results.json": "{}"}, command="third")
    assert (tmp_path / "victim").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    write_output_dir(empty, {"index.html": "x"}, command="test")
    assert _listing(empty) == [MANIFEST_NAME, "index.html"]


def test_never_replaces_a_user_file_that_takes_an_output_name(tmp_path):
    out = tmp_path / "out"
    write_output_dir(out, {"results.json": "{}"}, command="run")
    (out / "index.html").write_text("the user's page")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match=r"holds index\.html, which spinformer did not write"):
        check_output_dir(out, "--out", ["index.html", "metrics.json"])
    with pytest.raises(ValueError, match=r"holds index\.html, which spinformer did not write"):
        write_output_dir(out, {"index.html": "report", "metrics.json": "{}"}, command="report")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary files either


def _writer(directory: str, tag: str, rounds: int) -> None:
    for i in range(rounds):
        body = f"{tag} {i} " + "x" * 50_000 + " END"
        write_output_dir(directory, {"index.html": body, "metrics.json": body}, command=tag)


def _reader(directory: str, rounds: int, queue) -> None:
    """Record every observation of a missing or incomplete index.html while writers run."""
    bad = 0
    for _ in range(rounds):
        try:
            with open(os.path.join(directory, "index.html")) as handle:
                text = handle.read()
            bad += not text.endswith(" END")
        except FileNotFoundError:
            bad += 1
    queue.put(bad)


def test_concurrent_writers_both_succeed_and_leave_one_consistent_output(tmp_path):
    out = tmp_path / "out"
    _writer(str(out), "seed", 1)
    queue = _fork.Queue()
    writers = [_fork.Process(target=_writer, args=(str(out), tag, 25)) for tag in ("A", "B")]
    reader = _fork.Process(target=_reader, args=(str(out), 3000, queue))
    for process in (*writers, reader):
        process.start()
    for process in (*writers, reader):
        process.join(120)
    assert [p.exitcode for p in writers] == [0, 0]
    assert queue.get(timeout=10) == 0  # the file was never missing or half-written
    index, metrics = (out / "index.html").read_text(), (out / "metrics.json").read_text()
    assert index == metrics and index.split()[:2] in (["A", "24"], ["B", "24"])
    assert _listing(out) == [MANIFEST_NAME, "index.html", "metrics.json"]


def _interrupted_writer(directory: str, ready, phase: str) -> None:
    """Write a new output but receive SIGINT while staging it, or while renaming it into place."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stage = _io._stage
    replace = os.replace

    def slow_stage(path, data, created=None):
        staged = stage(path, data, created)
        if phase == "staging" and path.name == "metrics.json":
            ready.set()  # one file staged, the next not yet: the parent sends SIGINT now
            signal.pause()
        return staged

    def replace_and_interrupt(src, dst):
        if phase == "commit" and str(dst).endswith("index.html"):
            os.kill(os.getpid(), signal.SIGINT)  # arrives between the renames of one output
        return replace(src, dst)

    _io._stage = slow_stage
    os.replace = replace_and_interrupt
    try:
        write_output_dir(directory, {"index.html": "new", "metrics.json": "new"}, command="new")
    except KeyboardInterrupt:
        os._exit(130)
    os._exit(0)


@pytest.mark.parametrize("phase", ["staging", "commit"])
def test_sigint_never_leaves_a_partial_output(tmp_path, phase):
    out = tmp_path / "out"
    write_output_dir(out, {"index.html": "old", "metrics.json": "old"}, command="old")
    ready = _fork.Event()
    child = _fork.Process(target=_interrupted_writer, args=(str(out), ready, phase))
    child.start()
    if phase == "staging":
        assert ready.wait(30)
        os.kill(child.pid, signal.SIGINT)
    child.join(30)
    assert child.exitcode == 130
    expected = "old" if phase == "staging" else "new"  # all of the old output, or all of the new
    assert (out / "index.html").read_text() == expected
    assert (out / "metrics.json").read_text() == expected
    assert _listing(out) == [MANIFEST_NAME, "index.html", "metrics.json"]  # no temporary files
