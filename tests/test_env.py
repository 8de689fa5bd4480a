"""The environment definitions cannot drift apart: environment.yml, the Makefile, pyproject.toml, the lock."""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import lib

ROOT = lib.runner.paths.ROOT


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[norm(name)] = version
    return pins


def test_environment_yml_installs_exactly_what_make_installs():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    make_args = re.search(r"^PIP_ARGS := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).strip()
    assert " ".join(pip) == make_args
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    make_python = re.search(r"^PYTHON \?= python(\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert python.split("=")[-1] == make_python
    assert Version(make_python + ".0") in SpecifierSet(project["requires-python"])


def test_every_dependency_is_pinned_and_consistent():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = constraints()
    for dep in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(dep)
        assert norm(req.name) in pins, f"{req.name} is not pinned in requirements/constraints.txt (make lock)"
        assert Version(pins[norm(req.name)]) in req.specifier, (
            f"{req.name}=={pins[norm(req.name)]} violates pyproject's {req.specifier}"
        )
    assert pins["torch"] == "2.13.0"


def test_installed_versions_match_the_lock():
    from importlib.metadata import PackageNotFoundError, version

    pins = constraints()
    for name in ("torch", "transformers", "peft", "papermill", "scikit-learn", "numpy"):
        try:
            got = version(name).split("+")[0]
        except PackageNotFoundError:
            continue
        assert got == pins[norm(name)], (
            f"{name} {got} installed, lock says {pins[norm(name)]}: run make install"
        )
