"""The fault suite: what a workstation does to a run, done to real `dbgpu` processes.

Two writers on one directory, kill -9 at seeded random points, SIGTERM, a full disk
(injected, and a real small tmpfs where this machine lets us mount one), corrupt lines,
a read-only output directory, and file modes. Each test checks what is on disk after the
fault and that a resume gives the uninterrupted result, byte for byte (the explore log is
reproducible: each step's draws are seeded by (seed, step)).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbgpu.cli import main
from dbgpu.explore import LOG_NAME, SETTINGS_NAME, scan_log
from dbgpu.io import LOCK_NAME

BATCH = 4
STEPS = 240                      # ~4 s of stepping for random:llama on a 2-core CPU
EXPLORE = ["explore", "--model", "random:llama", "--task", "word100", "--batch", str(BATCH), "--seed", "3",
           "--device", "cpu", "--quiet", "--threads", "1"]     # one thread: steady on a loaded machine


def start(args: list[str], **kw) -> subprocess.Popen:
    """`python -m dbgpu ARGS` as a user runs it (stdout and stderr captured)."""
    return subprocess.Popen([sys.executable, "-m", "dbgpu", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dbgpu", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)


def explore_args(out: Path, steps: int) -> list:
    return [*EXPLORE, "--steps", steps, "--out", out]


def complete_steps(out: Path) -> int:
    """Steps whole on disk (what a resume keeps); checks every complete line parses."""
    return scan_log(out / LOG_NAME, batch=BATCH).next_step


def wait_for_growth(out: Path, proc: subprocess.Popen, *, beyond: int, timeout: float = 120) -> bool:
    """Wait until the log is longer than `beyond` bytes (the process is stepping); False if
    the process ended first."""
    log = out / LOG_NAME
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        if log.exists() and log.stat().st_size > beyond:
            return True
        time.sleep(0.01)
    return False


def logged_lines(out: Path) -> int:
    log = out / LOG_NAME
    return log.read_bytes().count(b"\n") if log.exists() else 0


def stop_after_lines(out: Path, proc: subprocess.Popen, lines: int, *, timeout: float = 300) -> bool:
    """SIGSTOP `proc` once its log holds at least `lines` lines: a point in the run fixed by
    its progress, whatever the machine's speed. False if the process ended first (an
    outcome, not an error: the caller counts it)."""
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        if logged_lines(out) >= lines:
            proc.send_signal(signal.SIGSTOP)
            return proc.poll() is None
        time.sleep(0.001)
    return False


def finish(out: Path) -> subprocess.CompletedProcess | None:
    """Resume until STEPS steps are on disk (nothing to do when a run already got there)."""
    left = STEPS - complete_steps(out)
    if left == 0:
        return None
    r = run(explore_args(out, left))
    assert r.returncode == 0, r.stderr
    return r


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    """The uninterrupted log of STEPS steps."""
    out = tmp_path_factory.mktemp("reference") / "run"
    r = run(explore_args(out, STEPS))
    assert r.returncode == 0, r.stderr
    return (out / LOG_NAME).read_bytes()


# --------------------------------------------------------------------------- two writers


@pytest.mark.slow
def test_a_second_writer_is_refused_and_nothing_is_counted_twice(tmp_path, reference):
    out = tmp_path / "run"
    first = start(explore_args(out, STEPS))
    # the first writer is held (SIGSTOP) mid-run while the second tries: a stopped process
    # keeps its lock, so the refusal does not depend on which of the two is quicker
    assert stop_after_lines(out, first, 5 * BATCH), first.communicate()
    try:
        second = run(explore_args(out, STEPS))
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 2
    line = one_line(second.stderr)
    assert str(out) in line and f"pid {first.pid}" in line and "in use" in line
    rows = [json.loads(x) for x in (out / LOG_NAME).read_text().splitlines()]
    assert len({(r["step"], r["slot"]) for r in rows}) == len(rows) == STEPS * BATCH
    assert (out / LOG_NAME).read_bytes() == reference
    calls = json.loads((out / SETTINGS_NAME).read_text())["calls"]
    assert len(calls) == 1 and calls[0]["steps"] == STEPS          # the refused call recorded nothing


def test_the_lock_dies_with_its_process(tmp_path):
    """kill -9 leaves no stale lock: the kernel drops a flock with its holder."""
    out = tmp_path / "d"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom dbgpu.io import locked_dir\n"
        "with locked_dir(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"), str(out)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    code = main(["report", str(out)])                              # a writer of the same directory
    assert code == 2
    holder.kill()
    holder.wait()
    from dbgpu.io import locked_dir

    with locked_dir(out):                                          # free again
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())


# --------------------------------------------------------------------------- kill -9, SIGTERM


@pytest.mark.slow
def test_twenty_kills_at_random_points_then_resume_gives_the_uninterrupted_log(tmp_path, reference):
    """Kill -9 at 20 seeded points of the run's progress (a number of steps into each call,
    plus a seeded fraction of a step): each kill stops the process first (SIGSTOP) so it
    lands at that point whatever the machine's speed. A call that ends before its kill
    point is an outcome that counts (nothing to kill), never an error."""
    out = tmp_path / "run"
    rng = random.Random(20261125)
    landed = 0
    for i in range(20):
        done = complete_steps(out) if out.exists() else 0
        room = STEPS - done - 2                   # leave the last steps to the resume
        if room < 1:
            break
        ahead = rng.randint(1, max(1, 2 * room // (20 - i)))   # spread the kills over the run
        extra = rng.randint(0, BATCH - 1)         # some kills land between a step's lines
        proc = start(explore_args(out, STEPS - done))
        if stop_after_lines(out, proc, (done + min(ahead, room)) * BATCH + extra):
            landed += 1
        proc.kill()
        proc.wait()
        scan = scan_log(out / LOG_NAME, batch=BATCH)               # parses: at most a cut tail
        assert scan.next_step <= STEPS
    assert landed >= 10, f"only {landed} kills landed while the run was stepping"
    finish(out)
    assert (out / LOG_NAME).read_bytes() == reference


@pytest.mark.slow
def test_sigterm_is_one_line_exit_143_and_the_log_ends_at_a_whole_step(tmp_path, reference):
    out = tmp_path / "run"
    proc = start(explore_args(out, STEPS))
    assert stop_after_lines(out, proc, 30 * BATCH + 1), proc.communicate()   # mid-step 30, held
    proc.send_signal(signal.SIGTERM)                # delivered once it runs again
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert one_line(err) == "dbgpu explore: terminated"
    scan = scan_log(out / LOG_NAME, batch=BATCH)
    assert not scan.needs_repair and 30 <= scan.next_step < STEPS
    call = json.loads((out / SETTINGS_NAME).read_text())["calls"][-1]
    assert call["steps"] == scan.next_step and call["summary"]["answers"] == scan.next_step * BATCH
    finish(out)
    assert (out / LOG_NAME).read_bytes() == reference


@pytest.mark.slow
def test_sigterm_during_score_leaves_no_output(tmp_path):
    out = tmp_path / "score"
    proc = start(["score", "--model", "random:llama", "--task", "word100", "--device", "cpu", "--quiet",
                  "--state-list", "BUZZY,TURKEY,ATTITUDE,PERSONAL", "--out", out])
    t0 = time.monotonic()
    while not (out / LOCK_NAME).exists() and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.001)
    # Stopped the moment it holds the lock (it has yet to load the model), then terminated:
    # the signal lands mid-run whatever the machine's speed.
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and one_line(err) == "dbgpu score: terminated"
    assert not out.exists()                    # it created the directory, so it took it away again


# --------------------------------------------------------------------------- a full disk


def _disk_full_at(n: int):
    """os.write whose n-th call writes half its bytes and fails with ENOSPC (the disk
    filling up); the calls before and after it write normally (space freed again)."""
    real = os.write
    calls = {"n": 0}

    def write(fd, data):
        calls["n"] += 1
        if calls["n"] == n:
            real(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    return write


def test_a_full_disk_during_explore_keeps_the_last_whole_step_then_resumes(tmp_path, capsys, monkeypatch,
                                                                          tiny_lms):
    """ENOSPC injected into the 6th os.write (after the lock's pid, explore.json and steps
    0-2: step 3's lines, half written): exit 2, one line naming the log, the log cut back
    to its last whole step and explore.json saying so; a resume gives the uninterrupted log."""
    import dbgpu.models

    lm = tiny_lms("llama")
    monkeypatch.setattr(dbgpu.models, "load_model", lambda *a, **k: lm)
    args = ["explore", "--model", "random:llama", "--task", "word100", "--batch", "4", "--seed", "3",
            "--quiet", "--steps", "12"]
    ref = tmp_path / "ref"
    assert main([*args, "--out", str(ref)]) == 0
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        import dbgpu.io

        m.setattr(dbgpu.io.os, "write", _disk_full_at(6))
        code = main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    line = one_line(err)
    assert str(out / LOG_NAME) in line and "No space left on device" in line
    scan = scan_log(out / LOG_NAME, batch=4)
    assert not scan.needs_repair and scan.next_step == 3
    assert json.loads((out / SETTINGS_NAME).read_text())["calls"][-1]["steps"] == 3
    assert main([*args[:-1], "9", "--out", str(out)]) == 0
    assert (out / LOG_NAME).read_bytes() == (ref / LOG_NAME).read_bytes()


def test_a_full_disk_during_an_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    from dbgpu.errors import DbgpuError
    from dbgpu.io import write_json_atomic

    path = tmp_path / "stats.json"
    write_json_atomic(path, {"old": 1})
    import dbgpu.io

    monkeypatch.setattr(dbgpu.io.os, "write", _disk_full_at(1))
    with pytest.raises(DbgpuError, match=f"cannot write {path}: No space left on device"):
        write_json_atomic(path, {"new": list(range(1000))})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]   # no temporary file left


@contextlib.contextmanager
def tmpfs(path: Path, *options: str):
    """A small tmpfs at `path` (root only); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.slow
def test_a_real_full_disk(tmp_path, reference):
    """explore on a 64 KiB tmpfs fills it: exit 2, one line; copied to a roomy disk, it resumes."""
    with tmpfs(tmp_path / "small", "size=64k") as disk:
        out = disk / "run"
        r = run(explore_args(out, STEPS))
        assert r.returncode == 2
        line = one_line(r.stderr)
        assert "No space left on device" in line and str(out) in line
        scan = scan_log(out / LOG_NAME, batch=BATCH)
        assert 0 < scan.next_step < STEPS and not scan.needs_repair
        copy = tmp_path / "moved"
        copy.mkdir()
        for name in (LOG_NAME, SETTINGS_NAME):
            (copy / name).write_bytes((out / name).read_bytes())
    finish(copy)
    assert (copy / LOG_NAME).read_bytes() == reference


@pytest.mark.slow
def test_a_read_only_output_directory_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "size=1m", "ro") as disk:
        for args in (explore_args(disk / "run", 2),
                     ["score", "--model", "random:llama", "--task", "word100", "--state-list", "BUZZY,TURKEY",
                      "--out", disk / "s"]):
            r = run(args)
            assert r.returncode == 2, r.stderr
            line = one_line(r.stderr)
            assert str(disk) in line
        assert list(disk.iterdir()) == []


# --------------------------------------------------------------------------- corrupt lines


@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_corrupt_terminated_line_is_an_error_for_explore_and_fit(tmp_path, capsys, where):
    out = tmp_path / "run"
    args = ["explore", "--model", "random:llama", "--task", "word100", "--batch", "2", "--quiet", "--out", str(out)]
    assert main([*args, "--steps", "3"]) == 0
    log = out / LOG_NAME
    lines = log.read_text().splitlines()
    k = 2 if where == "middle" else len(lines) - 1
    lines[k] = lines[k][:15]                                      # cut short, but newline-terminated
    log.write_text("\n".join(lines) + "\n")
    before = log.read_bytes()
    capsys.readouterr()
    assert main([*args, "--steps", "1"]) == 2
    assert f"line {k + 1} is not valid JSON" in one_line(capsys.readouterr().err)
    assert log.read_bytes() == before                             # never "repaired"
    assert main(["fit", str(log), "--out", str(tmp_path / "fit")]) == 2
    assert f"line {k + 1} is not valid JSON" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "fit").exists()


def test_an_unterminated_last_line_is_a_crash_remnant(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["explore", "--model", "random:llama", "--task", "word100", "--batch", "2", "--quiet", "--out", str(out)]
    assert main([*args, "--steps", "3"]) == 0
    whole = (out / LOG_NAME).read_bytes()
    with open(out / LOG_NAME, "ab") as f:
        f.write(b'{"source": "BUZ')
    capsys.readouterr()
    assert main([*args, "--steps", "1"]) == 0
    assert "repaired" in capsys.readouterr().err
    assert (out / LOG_NAME).read_bytes()[:len(whole)] == whole


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_files_and_directories_get_the_umask_modes(tmp_path, mask, file_mode, dir_mode):
    def with_umask():
        os.umask(mask)

    root = tmp_path / "m"
    r = run(["run", "--model", "random:llama", "--n-states", "4", "--device", "cpu", "--quiet", "--out", root / "r"],
            preexec_fn=with_umask)
    assert r.returncode == 0, r.stderr
    r = run(explore_args(root / "e", 2), preexec_fn=with_umask)
    assert r.returncode == 0, r.stderr
    seen = 0
    for p in root.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (dir_mode if p.is_dir() else file_mode), (p, oct(mode))
        seen += 1
    assert seen > 20                           # score, fit, report and explore outputs, both dirs


# --------------------------------------------------------------------------- score: kill -9, resume


@pytest.mark.slow
def test_kill9_during_score_then_resume_gives_the_uninterrupted_matrix(tmp_path, word_task):
    import numpy as np

    states = tmp_path / "states.json"
    states.write_text(json.dumps(word_task.seed_states(48)))
    args = ["score", "--model", "random:llama", "--task", "word100", "--states", states, "--device", "cpu",
            "--quiet", "--method", "plain", "--rows-per-block", "4", "--threads", "1"]
    ref = tmp_path / "ref"
    assert run([*args, "--out", ref]).returncode == 0
    out = tmp_path / "run"
    proc = start([*args, "--out", out])
    while proc.poll() is None and not any((out / "shards").glob("*.npz")):
        time.sleep(0.001)
    proc.send_signal(signal.SIGSTOP)          # at its first whole shard of twelve, whatever the speed
    proc.kill()
    proc.wait()
    assert not (out / "meta.json").exists()                       # the kill landed mid-run
    assert not (out / "logT.npy").exists()                        # no half matrix, only whole shards
    r = run([*args, "--out", out])
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(out / "logT.npy"), np.load(ref / "logT.npy"))
    assert json.loads((out / "meta.json").read_text())["shards"]["rows_scored"] == 48
