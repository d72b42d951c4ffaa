"""The lock (requirements.lock) against pyproject.toml, environment.yml and this install."""

import tomllib

import pytest
import yaml

from spo import environment as env


def test_the_lock_is_solved_from_todays_pyproject(repo_root):
    recorded = env.recorded_inputs_digest(repo_root / env.LOCK_FILE)
    assert recorded == env.inputs_digest(repo_root), (
        f"pyproject.toml's dependencies (or its [tool.spo-repro.lock] table) changed since "
        f"{env.LOCK_FILE} was made: refresh it with `{env.REFRESH_COMMAND}` and commit it")


def test_every_declared_requirement_is_locked_at_an_admitted_version(repo_root):
    from packaging.requirements import Requirement

    locked = env.read_lock(repo_root / env.LOCK_FILE)
    inputs = env.lock_inputs(repo_root)
    for text in inputs["dependencies"] + inputs["test"] + inputs["lock"]["pins"]:
        req = Requirement(text)
        version = locked.get(env.canonical(req.name))
        assert version is not None, f"{req.name} ({text}) is not in {env.LOCK_FILE}; run {env.REFRESH_COMMAND}"
        assert req.specifier.contains(version, prereleases=True), (
            f"{env.LOCK_FILE} pins {req.name}=={version}, outside pyproject's '{text}'; "
            f"run {env.REFRESH_COMMAND}")


def test_every_lock_line_carries_hashes(repo_root):
    text = (repo_root / env.LOCK_FILE).read_text()
    blocks = [b for b in text.split("\n") if "==" in b and not b.startswith("#")]
    assert len(blocks) == len(env.read_lock(repo_root / env.LOCK_FILE)) > 100
    for line in blocks:
        assert line.rstrip().endswith("\\"), f"'{line}' has no --hash continuation"
    assert text.count("--hash=sha256:") >= len(blocks)


def test_environment_yml_installs_the_lock(repo_root):
    spec = yaml.safe_load((repo_root / "environment.yml").read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip == ["--require-hashes", f"-r {env.LOCK_FILE}"]
    python = next(d for d in spec["dependencies"] if isinstance(d, str) and d.startswith("python="))
    lock_python = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["spo-repro"]["lock"]["python-version"]
    assert python == f"python={lock_python}"


def test_readme_and_ci_install_the_lock(repo_root):
    command = f"--require-hashes -r {env.LOCK_FILE}"
    assert command in (repo_root / "README.md").read_text()
    assert command in (repo_root / ".ci" / "run").read_text()


def test_a_version_off_the_lock_is_named_with_both_versions():
    locked = {"torch": "2.14.1", "transformers": "5.25.0", "numpy": "2.4.6"}
    installed = {"torch": "2.14.1+cu130", "transformers": "5.24.0", "pip": "26.0"}
    found = env.lock_mismatches(locked, installed)
    assert found == [{"package": "numpy", "locked": "2.4.6", "installed": None},
                     {"package": "transformers", "locked": "5.25.0", "installed": "5.24.0"}]
    message = env.mismatch_message(found)
    assert "transformers: locked 5.25.0, installed 5.24.0" in message
    assert "numpy: locked 2.4.6, installed nothing" in message
    assert "--require-hashes -r requirements.lock" in message


def test_this_install_is_the_lock():
    found = env.check_install()
    assert not found, env.mismatch_message(found)


def test_provenance_names_the_lock_hash():
    from spo.io import provenance

    record = provenance("test", {})
    assert record["environment"]["lock_sha256"] == env.lock_sha256()
    assert len(record["environment"]["lock_sha256"]) == 64


@pytest.mark.parametrize("name,want", [("Open_CLIP.torch", "open-clip-torch"), ("PyYAML", "pyyaml")])
def test_canonical_names(name, want):
    assert env.canonical(name) == want
