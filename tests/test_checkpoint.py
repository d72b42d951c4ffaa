"""spo.checkpoint: atomic saves, fallback past a corrupt newest checkpoint, signal-driven saves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spo import checkpoint as ck

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SLURM signals are POSIX")


def write_state(value: int):
    def write(folder: Path) -> None:
        (folder / "state.json").write_text(json.dumps({"value": value}))
        (folder / "weights.bin").write_bytes(bytes([value % 256]) * 1000)
    return write


def load_state(folder: Path) -> int:
    return json.loads((folder / "state.json").read_text())["value"]


def test_save_is_atomic_and_latest_is_the_newest(tmp_path):
    for step in (10, 20, 30):
        path = ck.save_checkpoint(tmp_path, step, write_state(step), keep=None)
        assert path.name == f"step-{step:08d}" and (path / ck.MANIFEST).is_file()
    found = ck.latest_checkpoint(tmp_path, load=load_state)
    assert (found.step, found.state) == (30, 30)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_failing_write_leaves_no_checkpoint(tmp_path):
    ck.save_checkpoint(tmp_path, 1, write_state(1))

    def broken(folder: Path) -> None:
        (folder / "state.json").write_text("{half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path, 2, broken)
    assert [step for step, _ in ck.list_checkpoints(tmp_path)] == [1]
    assert list(tmp_path.iterdir()) == [ck.checkpoint_dir(tmp_path, 1)]


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-manifest", "unloadable"])
def test_corrupt_newest_falls_back_to_the_previous(tmp_path, damage, caplog):
    ck.save_checkpoint(tmp_path, 100, write_state(1))
    newest = ck.save_checkpoint(tmp_path, 200, write_state(2))
    if damage == "truncate":
        (newest / "weights.bin").write_bytes(b"\0" * 10)
    elif damage == "flip":
        (newest / "weights.bin").write_bytes(b"\7" * 1000)  # same size, other bytes
    elif damage == "no-manifest":
        (newest / ck.MANIFEST).unlink()

    def load(folder: Path) -> int:
        if damage == "unloadable" and folder == newest:
            raise ValueError("pickle data was truncated")
        return load_state(folder)

    found = ck.latest_checkpoint(tmp_path, load=load)
    assert (found.step, found.state) == (100, 1)
    assert str(newest) in caplog.text and "trying the previous one" in caplog.text


def test_no_complete_checkpoint_means_start_from_scratch(tmp_path):
    assert ck.latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / "step-00000005").mkdir()  # a folder with no manifest
    assert ck.latest_checkpoint(tmp_path) is None


def test_keep_prunes_old_checkpoints_and_same_step_is_a_no_op(tmp_path):
    for step in range(1, 6):
        ck.save_checkpoint(tmp_path, step, write_state(step), keep=2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [5, 4]
    mtime = (ck.checkpoint_dir(tmp_path, 5) / ck.MANIFEST).stat().st_mtime_ns
    ck.save_checkpoint(tmp_path, 5, write_state(99), keep=2)
    assert (ck.checkpoint_dir(tmp_path, 5) / ck.MANIFEST).stat().st_mtime_ns == mtime
    with pytest.raises(ck.CheckpointError, match="keep must be >= 1"):
        ck.prune_checkpoints(tmp_path, 0)


def test_signal_sets_the_flag_in_process():
    previous = ck.install_signal_handlers()
    try:
        ck.clear_request()
        assert not ck.should_checkpoint_and_exit()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert ck.should_checkpoint_and_exit() and ck.received_signal() == signal.SIGUSR1
    finally:
        ck.clear_request()
        ck.restore_signal_handlers(previous)


# A toy "training" whose state after step n is a pure function of n, as a seeded trainer's is: it
# resumes from the newest complete checkpoint, saves every EVERY steps and on SIGTERM / SIGUSR1.
TRAINER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from spo import checkpoint as ck

    root, total, every, delay = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    ck.install_signal_handlers()
    found = ck.latest_checkpoint(root, load=lambda d: json.loads((d / "state.json").read_text()))
    step, value = (found.step, found.state["value"]) if found else (0, 0)
    print(f"start {step}", flush=True)
    while step < total:
        time.sleep(delay)
        step += 1
        value = (value * 31 + step) % 1000003
        if step % every == 0 or ck.should_checkpoint_and_exit():
            state = {"value": value}
            ck.save_checkpoint(root, step, lambda d: (d / "state.json").write_text(json.dumps(state)))
            print(f"saved {step}", flush=True)
            if ck.should_checkpoint_and_exit():
                print(f"preempted {step} signal {ck.received_signal()}", flush=True)
                sys.exit(ck.PREEMPTED_EXIT_CODE)
    (root / "final.json").write_text(json.dumps({"step": step, "value": value}))
""")


def run_trainer(root: Path, total: int, *, delay: float = 0.0, every: int = 7):
    return subprocess.Popen([sys.executable, "-c", TRAINER, str(root), str(total), str(every),
                             str(delay)], stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signalled_job_checkpoints_exits_and_resumes_to_the_same_result(tmp_path, sig):
    reference = run_trainer(tmp_path / "reference", 40)
    assert reference.wait(timeout=60) == 0

    root = tmp_path / "interrupted"
    job = run_trainer(root, 40, delay=0.05)
    lines = []
    for line in job.stdout:  # wait until it is training past its first interval checkpoint
        lines.append(line.strip())
        if line.startswith("saved 7"):
            break
    time.sleep(0.2)
    job.send_signal(sig)
    out, _ = job.communicate(timeout=60)
    lines += out.split()
    assert job.returncode == ck.PREEMPTED_EXIT_CODE, lines
    preempted = [line for line in out.splitlines() if line.startswith("preempted")]
    assert preempted and preempted[0].endswith(f"signal {int(sig)}"), lines
    stopped_at = int(preempted[0].split()[1])
    assert 7 < stopped_at < 40
    assert ck.latest_checkpoint(root).step == stopped_at  # the signal checkpoint is complete

    resumed = run_trainer(root, 40)
    out, _ = resumed.communicate(timeout=60)
    assert resumed.returncode == 0 and out.startswith(f"start {stopped_at}"), out
    final = json.loads((root / "final.json").read_text())
    assert final == json.loads((tmp_path / "reference" / "final.json").read_text())
