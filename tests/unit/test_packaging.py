"""pyproject.toml and environment.yml must install the same dependencies."""

import re
import tomllib

import yaml


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_and_pyproject_name_the_same_dependencies(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for r in project["optional-dependencies"]["test"]}
    env = yaml.safe_load((repo_root / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    in_env = {_name(r) for r in pip if not r.startswith("-e")}
    assert declared == in_env, (sorted(declared - in_env), sorted(in_env - declared))
    assert "-e ." in pip  # the environment installs this package itself


def test_tested_torch_pair_is_admitted(repo_root):
    from importlib.metadata import version

    from packaging.requirements import Requirement

    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    for requirement in map(Requirement, project["dependencies"]):
        installed = version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (requirement, installed)
