"""A pre-imported Python that runs the DAG's local jobs by fork (config key ``job_server``).

Why: on a 2-core laptop the tiny DAG runs ~120 ``python -m spo`` jobs, and each spends 3-5 s
importing torch, diffusers and transformers before its few seconds of work (docs/tiny-profile.md,
"Where the DAG's time goes"). The server imports them once; every job is a ``fork()`` of it, so a
job starts with them in memory. The computation is the same code in the same interpreter, so the
outputs are the same as a direct run's.

How a job runs through it: the rule's command stays ``python -m spo <stage> ...``; when the
environment variable ``SPO_JOB_SERVER`` names a live server on this host, ``spo.__main__`` hands
its argv, working directory, environment and its stdin / stdout / stderr (the rule's log file) to
the server over a Unix socket (``socket.send_fds``) and waits for the exit status. The server
forks a *handler* per job; the handler forks the *runner*, which takes on the job's directory,
environment and file descriptors and calls ``spo.__main__.main(argv)``. The client forwards the
signals it gets (SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2) to the runner, so a training asked to
stop checkpoints as it would when run directly. The handler watches both sides: when the runner
ends it sends its exit status (128 + N for a signal N, as a shell reports it); when the client is
gone (killed outright) it terminates the runner.

Faults never pass silently: a server that cannot be reached is a warning on the job's stderr and
the job runs directly; a server that dies while a job runs is an error (exit 1) naming the socket.
The server exits with Snakemake (it polls its parent's pid), and is only started for the local
executor (``workflow/rules/common.smk``): a cluster job never sees it.

Snakemake's ``benchmark:`` records of a job run through the server time the client: the wall-clock
``s`` (what ``spo.compute`` reads) is the job's, its memory columns are not.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Sequence

ENV = "SPO_JOB_SERVER"  # "<hostname>:<socket path>", set by the Snakefile's onstart
# What every heavy stage imports; a module missing here is imported by the job itself, as always.
PRELOAD = ("torch", "numpy", "pandas", "pyarrow.parquet", "PIL.Image", "safetensors.torch",
           "transformers", "diffusers", "peft", "accelerate",
           "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
           "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl",
           "transformers.models.clip.modeling_clip", "spo.__main__", "spo.config", "spo.generate",
           "spo.score", "spo.metrics.pickscore", "spo.models.pipelines", "spo.training.stage",
           "spo.training.spo_trainer")
_HEADER = struct.Struct("!I")
_STATUS = struct.Struct("!i")
_MAX_REQUEST = 16 * 1024 * 1024
STARTUP_TIMEOUT_S = 120.0


class JobServerError(RuntimeError):
    """The server could not start, or stopped while a job ran."""


# --- client: inside `python -m spo` ----------------------------------------------------------

def server_address(environ=os.environ) -> str | None:
    """The socket path of a server on this host named by ``SPO_JOB_SERVER``, else None."""
    value = environ.get(ENV, "")
    host, sep, path = value.partition(":")
    if not sep or not path or host != socket.gethostname():
        return None  # unset, or a server on another machine (a job moved to a cluster node)
    return path


def run_through_server(path: str, argv: Sequence[str]) -> int | None:
    """Run ``python -m spo argv`` in the server at ``path``; its exit status, or None when the
    server cannot be reached (the caller then runs the job directly, after the warning)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError as exc:
        conn.close()
        print(f"warning: the job server at {path} ({ENV}) cannot be reached ({exc}); "
              f"running this job directly", file=sys.stderr, flush=True)
        return None
    request = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    with conn:
        socket.send_fds(conn, [_HEADER.pack(len(request)) + request], [0, 1, 2])
        runner = _read_exactly(conn, _STATUS.size)
        if runner is not None:
            _forward_signals(_STATUS.unpack(runner)[0])
            reply = _read_exactly(conn, _STATUS.size)
        else:
            reply = None
    if reply is None:
        print(f"error: the job server at {path} ({ENV}) stopped before this job ended; rerun it "
              f"(set {ENV}= to run jobs directly)", file=sys.stderr, flush=True)
        return 1
    return _STATUS.unpack(reply)[0]


# What a direct job would receive from a shell, Snakemake or SLURM: the runner gets it instead and
# answers as the job would (the trainers checkpoint on SIGTERM / SIGUSR1, spo.checkpoint).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _forward_signals(runner: int) -> None:
    def forward(signum, _frame):
        try:
            os.kill(runner, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)


def _read_exactly(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))  # retried after a forwarded signal (PEP 475)
        if not chunk:
            return None
        data += chunk
    return data


# --- server -----------------------------------------------------------------------------------

ENTRY = "spo.__main__:main"


def serve(path: str, parent: int, preload: Sequence[str] = PRELOAD, entry: str = ENTRY) -> None:
    """Import ``preload``, listen at ``path``, fork a handler per connection; return when the
    process ``parent`` is gone (Snakemake ended) or on SIGTERM. ``entry`` ("module:function",
    called with the job's argv, returns its exit status) is what a runner runs."""
    for name in preload:
        try:
            __import__(name)
        except Exception as exc:  # the job imports it itself and reports any real error
            print(f"job server: preloading {name} failed ({type(exc).__name__}: {exc})", flush=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    os.replace(path + ".tmp", path)  # the path appears once the server accepts
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    print(f"job server: pid {os.getpid()}, listening at {path}", flush=True)
    while not stop and _alive(parent):
        try:
            ready, _, _ = select.select([listener], [], [], 1.0)
        except InterruptedError:
            continue
        if not ready:
            continue
        conn, _ = listener.accept()
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            code = 1
            try:
                code = _handle(conn, entry)
            finally:
                os._exit(code)
        conn.close()
    listener.close()
    Path(path).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return os.getppid() == pid


def _handle(conn: socket.socket, entry: str) -> int:
    """In the handler: receive one job, fork its runner, report its exit status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    message, fds, _, _ = socket.recv_fds(conn, 65536, 3)
    if len(fds) != 3 or len(message) < _HEADER.size:
        return 1
    (size,) = _HEADER.unpack(message[:_HEADER.size])
    body = message[_HEADER.size:]
    while len(body) < size <= _MAX_REQUEST:
        chunk = conn.recv(min(1 << 20, size - len(body)))
        if not chunk:
            return 1
        body += chunk
    request = json.loads(body)
    runner = os.fork()
    if runner == 0:
        conn.close()
        os._exit(_run_job(request, fds, entry))
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(_STATUS.pack(runner))  # the client forwards its signals to this pid
    except OSError:
        _terminate(runner)
        return 1
    status = None
    while status is None:
        readable, _, _ = select.select([conn], [], [], 0.2)
        if readable and not conn.recv(1):  # the client is gone: Snakemake cancelled the job
            _terminate(runner)
            return 1
        pid, raw = os.waitpid(runner, os.WNOHANG)
        if pid:
            status = os.waitstatus_to_exitcode(raw)
    code = status if status >= 0 else 128 - status  # a shell's convention for a signal
    try:
        conn.sendall(_STATUS.pack(code))
    except OSError:
        pass
    return 0


def _terminate(pid: int, grace_s: float = 10.0) -> None:
    os.kill(pid, signal.SIGTERM)  # the trainers checkpoint on SIGTERM (spo.checkpoint)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _run_job(request: dict, fds: list[int], entry: str) -> int:
    """In the runner: become the job (directory, environment, stdio), run ``entry``."""
    _die_with_parent()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [sys.executable + " -m spo", *request["argv"]]
    try:
        import importlib

        module, _, function = entry.partition(":")
        code = getattr(importlib.import_module(module), function)(request["argv"])
    except SystemExit as exc:  # argparse's exit, sys.exit in a stage
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return int(code or 0)


def _die_with_parent() -> None:
    """Linux: the runner gets SIGTERM if its handler dies (no orphaned job keeps a core busy)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --- start and stop (the Snakefile's onstart / onsuccess / onerror) ---------------------------

class Server:
    """A started server: its process, socket and the value of ``SPO_JOB_SERVER`` for the jobs."""

    def __init__(self, process: subprocess.Popen, folder: str, log_path: Path):
        self.process, self.folder, self.log_path = process, folder, log_path
        self.path = os.path.join(folder, "socket")

    @property
    def env_value(self) -> str:
        return f"{socket.gethostname()}:{self.path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for name in ("socket", "socket.tmp"):
            Path(self.folder, name).unlink(missing_ok=True)
        try:
            os.rmdir(self.folder)
        except OSError:
            pass


def start(log_path: str | Path, python: str = sys.executable, preload: Sequence[str] = PRELOAD,
          timeout_s: float = STARTUP_TIMEOUT_S, entry: str = ENTRY) -> Server:
    """Start a server whose parent is this process; return once it accepts connections.

    Raises ``JobServerError`` (with the server's log) when it exits or is not ready in time.
    """
    # A short private folder: a Unix socket's path is limited to ~107 bytes.
    folder = tempfile.mkdtemp(prefix="spo-jobs-")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        try:
            process = subprocess.Popen(
                [python, "-m", "spo.job_server", "--socket", os.path.join(folder, "socket"),
                 "--parent", str(os.getpid()), "--preload", ",".join(preload), "--entry", entry],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if k != ENV})
        except OSError as exc:
            os.rmdir(folder)
            raise JobServerError(f"the job server could not be started with {python}: {exc}") from exc
    server = Server(process, folder, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()
            raise JobServerError(f"the job server exited with status {process.returncode} before "
                                 f"it was ready; its log {log_path}:\n{log_path.read_text()[-2000:]}")
        if os.path.exists(server.path):
            return server
        time.sleep(0.05)
    server.stop()
    raise JobServerError(f"the job server was not ready within {timeout_s:.0f} s; its log: {log_path}")


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m spo.job_server", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--preload", default=",".join(PRELOAD))
    parser.add_argument("--entry", default=ENTRY, help="module:function a runner calls with the argv")
    args = parser.parse_args(argv)
    serve(args.socket, args.parent, [m for m in args.preload.split(",") if m], args.entry)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
