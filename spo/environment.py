"""The locked Python environment: what ``requirements.lock`` pins, and whether this install is it.

``requirements.lock`` (every package, exact version, sha256 hashes) is made by
``bash scripts/refresh_lock.sh`` from ``pyproject.toml``: its dependencies, the ``test`` extra and
the ``[tool.spo-repro.lock]`` table (the torch pair, the Python version and platform it is solved
for). Its header records a digest of those inputs, so a changed ``pyproject.toml`` makes the lock
stale (a test says so). Every stage's ``provenance.json`` and every table's header name the lock's
hash; an install that differs from the lock is reported package by package (``check_install``).

Standard library only: the DAG imports it at start, before anything heavy.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from functools import lru_cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = "requirements.lock"
REFRESH_COMMAND = "bash scripts/refresh_lock.sh"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
_INPUTS = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})\s*$", re.M)


def canonical(name: str) -> str:
    """PEP 503 normalised project name (``Open_CLIP.torch`` -> ``open-clip-torch``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_path(root: str | Path = REPO_ROOT) -> Path:
    return Path(root) / LOCK_FILE


def lock_inputs(root: str | Path = REPO_ROOT) -> dict:
    """What the lock is solved from: pyproject's dependencies, the test extra, the lock table."""
    project = tomllib.loads((Path(root) / "pyproject.toml").read_text())
    return {"dependencies": sorted(project["project"]["dependencies"]),
            "test": sorted(project["project"]["optional-dependencies"]["test"]),
            "lock": project["tool"]["spo-repro"]["lock"]}


def inputs_digest(root: str | Path = REPO_ROOT) -> str:
    blob = json.dumps(lock_inputs(root), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def read_lock(path: str | Path) -> dict[str, str]:
    """{canonical name: version} of every pinned package of a lock file."""
    out = {}
    for line in Path(path).read_text().splitlines():
        match = _PIN.match(line)
        if match:
            out[canonical(match.group(1))] = match.group(2)
    return out


def recorded_inputs_digest(path: str | Path) -> str | None:
    match = _INPUTS.search(Path(path).read_text())
    return match.group(1) if match else None


@lru_cache(maxsize=4)
def lock_sha256(root: str | Path = REPO_ROOT) -> str | None:
    """sha256 of ``requirements.lock`` (None when the checkout has none, e.g. an installed wheel)."""
    path = lock_path(root)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@lru_cache(maxsize=1)
def installed_versions() -> dict[str, str]:
    """{canonical name: version} of this interpreter's packages; read once per process (~0.27 s:
    every job checks the install and records it in its provenance)."""
    from importlib import metadata

    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()
            if d.metadata["Name"]}


def lock_mismatches(locked: dict[str, str], installed: dict[str, str]) -> list[dict[str, str | None]]:
    """Locked packages whose installed version differs (or that are missing), sorted by name.

    Packages installed but not locked (pip, tools of your own) are not reported. A local-version
    suffix (``2.14.1+cu130``) counts as the locked release: the cluster's CUDA build of the pair.
    """
    out = []
    for name, version in sorted(locked.items()):
        have = installed.get(name)
        if have is None or (have != version and have.split("+")[0] != version):
            out.append({"package": name, "locked": version, "installed": have})
    return out


def check_install(root: str | Path = REPO_ROOT) -> list[dict[str, str | None]]:
    """Mismatches between this interpreter's packages and the lock ([] without a lock)."""
    path = lock_path(root)
    if not path.is_file():
        return []
    return lock_mismatches(read_lock(path), installed_versions())


def mismatch_message(mismatches: list[dict[str, str | None]]) -> str:
    lines = [f"  {m['package']}: locked {m['locked']}, installed {m['installed'] or 'nothing'}"
             for m in mismatches]
    return (f"this install differs from {LOCK_FILE} in {len(mismatches)} package(s), so numbers "
            f"may not match the expected results:\n" + "\n".join(lines) +
            f"\nreinstall with `.venv/bin/pip install --require-hashes -r {LOCK_FILE}`")


def summary(root: str | Path = REPO_ROOT) -> dict:
    """The environment record of ``provenance.json``: the lock's hash and any mismatch."""
    return {"lock": LOCK_FILE, "lock_sha256": lock_sha256(root),
            "python": sys.version.split()[0], "install_mismatches": check_install(root)}


def short_lock_hash(root: str | Path = REPO_ROOT) -> str:
    digest = lock_sha256(root)
    return digest[:12] if digest else "unlocked"


if __name__ == "__main__":  # ``python -m spo.environment inputs-digest`` (scripts/refresh_lock.sh)
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "inputs-digest":
        print(inputs_digest())
    elif command == "lock-table":
        print(json.dumps(lock_inputs()["lock"]))
    elif command == "check":
        found = check_install()
        print(mismatch_message(found) if found else f"the install matches {LOCK_FILE}")
        sys.exit(1 if found else 0)
    else:
        sys.exit("usage: python -m spo.environment inputs-digest | lock-table | check")
