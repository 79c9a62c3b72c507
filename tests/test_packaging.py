"""The package as users install it: what the wheel ships, and the lock CI installs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / ".ci" / "constraints.txt"


def project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def locked_versions() -> dict[str, str]:
    versions = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            versions[canonical(match.group(1))] = match.group(3)
    return versions


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_dependency_to_a_version_pyproject_allows():
    locked = locked_versions()
    meta = project()
    requirements = list(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        requirements += extra
    assert requirements
    for text in requirements:
        requirement = Requirement(text)
        name = canonical(requirement.name)
        assert name in locked, f"{name} is not in {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{LOCK.name} has {name}=={locked[name]}, pyproject asks for {text}: run `make lock`"
        )


def test_the_wheel_builds_without_deprecations_and_ships_py_typed_the_stubs_and_the_license(
        tmp_path):
    # The core is left out (PRETRADE_SKIP_CORE=1) so that this takes seconds:
    # the files checked here do not depend on it.
    env = dict(os.environ, PRETRADE_SKIP_CORE="1")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True, env=env, timeout=240, capture_output=True, text=True,
    )
    # setuptools says what it will stop accepting as SetuptoolsDeprecationWarning
    # (license classifiers, a license table, setup.py options): none of it here.
    assert "deprecat" not in (built.stdout + built.stderr).lower(), built.stderr
    (wheel,) = tmp_path.glob("pretrade-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pretrade/py.typed" in names
    assert "pretrade/v1/risk_pb2.pyi" in names
    assert "pretrade/v1/records_pb2.pyi" in names
    assert "pretrade/state/lotlog.lua" in names  # the lot log's Redis function, loaded at start
    licenses = [n for n in names if n.endswith("/LICENSE") and ".dist-info/" in n]
    assert licenses, sorted(n for n in names if ".dist-info/" in n)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert f"License-Expression: {project()['license']}" in text
    assert "Apache License" in (ROOT / "LICENSE").read_text()
