"""Preemption-safe checkpoints for long training jobs (SLURM time limits and preemption).

Three generic pieces a trainer combines; none of them knows what a model is:

* ``save_checkpoint(root, step, write)`` writes ``<root>/step-<N>/`` atomically: ``write(folder)``
  fills a temporary folder, then a manifest (``MANIFEST.json``: every file's size and SHA-256) is
  written *last*, and only then is the folder renamed to its final name. A job killed while
  saving leaves at most a hidden temporary folder, never a half-written ``step-<N>``.
* ``latest_checkpoint(root, load)`` returns the newest *complete* checkpoint: its manifest exists,
  every file matches it, and ``load(folder)`` (if given) does not raise. A corrupt newest
  checkpoint is skipped with a warning and the previous one is used.
* ``install_signal_handlers()`` makes SIGTERM and SIGUSR1 set a flag the training loop polls with
  ``should_checkpoint_and_exit()``. SLURM sends SIGTERM at a time-limit kill or preemption (then
  SIGKILL after ``KillWait`` seconds) and, when asked with ``--signal=USR1@<seconds>``, SIGUSR1
  that many seconds before the limit.

A training loop::

    install_signal_handlers()
    found = latest_checkpoint(ckpt_dir, load=load_state)
    step = found.step if found else 0
    if found: restore(found.state)
    while step < total:
        train_one_step(); step += 1
        if step % every == 0 or should_checkpoint_and_exit():
            save_checkpoint(ckpt_dir, step, lambda d: save_state(d))
            if should_checkpoint_and_exit():
                sys.exit(PREEMPTED_EXIT_CODE)

Exiting non-zero after a signal checkpoint makes Snakemake count the job as failed (its output
does not exist yet), so ``retries:`` or the next ``snakemake`` run starts it again and it resumes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from spo.io import atomic_path, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
KEEP = 2  # the newest two: one to resume from, one to fall back to when it is damaged
# EX_TEMPFAIL from sysexits.h: "try again later", which is what a preempted job means.
PREEMPTED_EXIT_CODE = 75
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written; the message names the folder and the reason."""


class Preempted(Exception):
    """Raised inside a long unit of work (a sampling loop, a round's micro-batches) once a
    preemption signal has arrived, so that the trainer checkpoints within SLURM's grace period
    instead of at the end of the unit."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: its step, its folder, and what ``load`` returned (or None)."""

    step: int
    path: Path
    state: Any = None


def checkpoint_dir(root: str | os.PathLike, step: int) -> Path:
    """``<root>/step-<N>`` with N zero-padded, so names sort in step order too."""
    if step < 0:
        raise CheckpointError(f"checkpoint step must be >= 0, got {step}")
    return Path(root) / f"step-{step:08d}"


def _fsync(path: Path) -> None:
    # Rename is atomic, but without fsync a crash of the node can leave a renamed folder whose
    # file contents never reached the disk; the manifest check would catch it, at a lost step.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: str | os.PathLike, step: int, write: Callable[[Path], None],
                    *, keep: int | None = KEEP) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and return its folder.

    Args:
        root: the folder holding ``step-<N>`` checkpoints (created if missing).
        step: the training step the state belongs to.
        write: fills the temporary folder it is given with the state files.
        keep: complete checkpoints to keep afterwards (older ones are deleted); None keeps all.

    A complete checkpoint of the same step already on disk is kept as it is (saving twice at one
    step, say on the interval and then on a signal, is a no-op).
    """
    final = checkpoint_dir(root, step)
    if _verify(final) is None:
        log.info("checkpoint '%s' is already complete; not rewriting it", final)
        return final
    with atomic_path(final, is_dir=True) as tmp:
        write(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        if not files:
            raise CheckpointError(f"checkpoint '{final}': the write function wrote no file")
        entries = {}
        for path in files:
            _fsync(path)
            entries[path.relative_to(tmp).as_posix()] = {
                "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        manifest = tmp / MANIFEST
        manifest.write_text(json.dumps({"step": step, "files": entries}, indent=1) + "\n")
        _fsync(manifest)
    if keep is not None:
        prune_checkpoints(root, keep)
    return final


def _verify(folder: Path) -> str | None:
    """None when ``folder`` is a complete checkpoint, else why not."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (the save did not finish)"
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is unreadable ({exc})"
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            return f"'{name}' is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"'{name}' has {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if sha256_file(path) != entry["sha256"]:
            return f"'{name}' does not match its SHA-256 in the manifest"
    return None


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every ``step-<N>`` folder under ``root`` (complete or not), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def latest_checkpoint(root: str | os.PathLike,
                      load: Callable[[Path], Any] | None = None) -> Checkpoint | None:
    """The newest complete checkpoint under ``root``, or None when there is none.

    ``load(folder)``, if given, reads the state; a checkpoint it raises on counts as corrupt too,
    and its return value is ``Checkpoint.state``. Corrupt checkpoints are skipped with a warning
    naming the folder and the reason, newest first, so a damaged newest one falls back to the
    previous one.
    """
    for step, folder in list_checkpoints(root):
        reason = _verify(folder)
        state = None
        if reason is None and load is not None:
            try:
                state = load(folder)
            except Exception as exc:  # noqa: BLE001 - any failure to load means: use an older one
                reason = f"load failed ({type(exc).__name__}: {exc})"
        if reason is None:
            return Checkpoint(step, folder, state)
        log.warning("checkpoint '%s' is not usable: %s; trying the previous one", folder, reason)
    return None


def prune_checkpoints(root: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints; return what was deleted.

    Incomplete folders older than the newest complete one are deleted as well; the temporary
    folders of a save in progress (hidden names) are never touched.
    """
    if keep < 1:
        raise CheckpointError(f"keep must be >= 1 (one checkpoint to resume from), got {keep}")
    complete = 0
    deleted = []
    for _step, folder in list_checkpoints(root):
        if complete >= keep or (complete and _verify(folder) is not None):
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
        elif _verify(folder) is None:
            complete += 1
    return deleted


# --- Signals ------------------------------------------------------------------------------------
_REQUESTED: list[int] = []  # the signals received; a list so the handler only appends (no locks)
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _handle(signum, _frame) -> None:
    # Only set the flag: a handler runs between two bytecodes of the training loop, where saving
    # (torch, file I/O, a collective op across ranks) is not safe. The loop saves at its next poll.
    _REQUESTED.append(signum)


def install_signal_handlers(signals: Iterable[int] = PREEMPTION_SIGNALS) -> dict[int, Any]:
    """Make ``signals`` (default SIGTERM, SIGUSR1) request a checkpoint; return the old handlers.

    Call it from the main thread (Python delivers signals only there) before training starts.
    """
    return {sig: signal.signal(sig, _handle) for sig in signals}


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    """Put back the handlers ``install_signal_handlers`` returned."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def should_checkpoint_and_exit() -> bool:
    """True once a preemption signal has arrived: save a checkpoint now and exit."""
    return bool(_REQUESTED)


def received_signal() -> int | None:
    """The first preemption signal received (for the log line), or None."""
    return _REQUESTED[0] if _REQUESTED else None


def clear_request() -> None:
    """Forget received signals (tests; or a loop that chose to go on)."""
    _REQUESTED.clear()
