"""spo.job_server: a job run as a fork of the server behaves as the same job run directly (exit
status, stdout / stderr into the rule's log, working directory, environment), a cancelled job's
runner is terminated, and an unreachable or dying server is never silent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spo import job_server

ROOT = Path(__file__).resolve().parents[1]

# The runner's entry in these tests: a probe module (no heavy preload, so a server starts in ~0.1 s).
PROBE = textwrap.dedent('''
    import os, signal, sys, time

    def main(argv):
        what = argv[0]
        if what == "echo":
            print("out", os.getcwd(), os.environ.get("PROBE_VALUE"), " ".join(argv[1:]))
            print("err line", file=sys.stderr)
            return int(argv[1]) if len(argv) > 1 else 0
        if what == "raise":
            raise ValueError("probe failure")
        if what == "exit":
            sys.exit(int(argv[1]))
        if what == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if what == "trap":  # a training that checkpoints and exits 75 when asked to stop
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
        if what in ("sleep", "trap"):
            with open(argv[1], "w") as f:
                f.write(f"{os.getpid()} {os.getppid()}")
            time.sleep(60)
        return 0
''')


@pytest.fixture
def probe_server(tmp_path, monkeypatch):
    (tmp_path / "jobprobe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    server = job_server.start(tmp_path / "server.log", preload=("jobprobe",), entry="jobprobe:main",
                              timeout_s=30)
    yield server
    server.stop()


def client(server, args, tmp_path, *, cwd=None, env_extra=None, background=False):
    """`python -m spo <args>` with SPO_JOB_SERVER pointing at ``server``; stdout and stderr into
    out.log / err.log, as a rule's `> {log} 2>&1` would."""
    env = dict(os.environ, **(env_extra or {}))
    env[job_server.ENV] = server.env_value
    out, err = open(tmp_path / "out.log", "w"), open(tmp_path / "err.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "spo", *args], stdout=out, stderr=err,
                            cwd=cwd or tmp_path, env=env)
    if background:
        return proc
    proc.wait(timeout=60)
    out.close(), err.close()
    return proc.returncode, (tmp_path / "out.log").read_text(), (tmp_path / "err.log").read_text()


def test_job_through_the_server_keeps_status_stdio_cwd_and_environment(probe_server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    code, out, err = client(probe_server, ["echo", "3", "x"], tmp_path, cwd=work,
                            env_extra={"PROBE_VALUE": "from-client"})
    assert code == 3
    assert out.strip() == f"out {work} from-client 3 x"
    assert err.strip() == "err line"


@pytest.mark.parametrize("args, expected", [(["raise"], 1), (["exit", "7"], 7), (["kill"], 128 + 9)])
def test_failures_reach_the_client_as_a_shell_reports_them(probe_server, tmp_path, args, expected):
    code, _, err = client(probe_server, args, tmp_path)
    assert code == expected
    if args == ["raise"]:
        assert "ValueError: probe failure" in err


def _wait_gone(pid, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _pids(marker, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.is_file() and marker.read_text().strip():
            return [int(v) for v in marker.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("the probe job never started")


def test_a_cancelled_job_stops_its_runner(probe_server, tmp_path):
    marker = tmp_path / "pid"
    proc = client(probe_server, ["sleep", str(marker)], tmp_path, background=True)
    runner, _ = _pids(marker)
    proc.kill()  # Snakemake cancelling the job kills the client
    proc.wait()
    assert _wait_gone(runner), "the runner outlived its cancelled client"


def test_a_signal_to_the_client_reaches_the_job(probe_server, tmp_path):
    """Snakemake or a shell stopping the job with SIGTERM: the job answers it (here: exit 75, as
    a training that checkpointed), and the client reports that status."""
    marker = tmp_path / "pid"
    proc = client(probe_server, ["trap", str(marker)], tmp_path, background=True)
    _pids(marker)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 75


def test_a_server_dying_mid_job_is_an_error_naming_it(probe_server, tmp_path):
    marker = tmp_path / "pid"
    proc = client(probe_server, ["sleep", str(marker)], tmp_path, background=True)
    runner, handler = _pids(marker)
    os.kill(handler, signal.SIGKILL)
    assert proc.wait(timeout=30) == 1
    assert "stopped before this job ended" in (tmp_path / "err.log").read_text()
    assert _wait_gone(runner), "the runner outlived its handler"


def test_an_unreachable_server_warns_and_runs_the_job_directly(tmp_path):
    env = dict(os.environ, **{job_server.ENV: f"{socket.gethostname()}:{tmp_path / 'missing'}"})
    proc = subprocess.run([sys.executable, "-m", "spo", "--help"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and "usage: python -m spo" in proc.stdout
    assert "cannot be reached" in proc.stderr and "running this job directly" in proc.stderr


def test_only_a_server_on_this_host_is_used():
    host = socket.gethostname()
    assert job_server.server_address({job_server.ENV: f"{host}:/tmp/s"}) == "/tmp/s"
    assert job_server.server_address({job_server.ENV: "another-node:/tmp/s"}) is None
    assert job_server.server_address({job_server.ENV: ""}) is None
    assert job_server.server_address({}) is None


def test_a_server_that_cannot_start_says_why(tmp_path):
    with pytest.raises(job_server.JobServerError, match="could not be started"):
        job_server.start(tmp_path / "server.log", preload=(), entry="x:y", timeout_s=30,
                         python=str(tmp_path / "no-python"))


def test_stop_removes_the_socket(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    server = job_server.start(tmp_path / "server.log", preload=(), timeout_s=30)
    assert os.path.exists(server.path)
    server.stop()
    assert not os.path.exists(server.path) and server.process.poll() is not None
