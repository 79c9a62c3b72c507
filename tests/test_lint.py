"""Linters, type checks and generated code are tests: style never depends on memory."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    result = run(sys.executable, "-m", "ruff", "check", "src", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_the_python_layer():
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_committed_generated_code_matches_the_proto(tmp_path):
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto" / "pretrade" / "v1").glob(
        "*.proto"))
    result = run(sys.executable, "-m", "grpc_tools.protoc", "-I", "proto",
                 f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                 f"--grpc_python_out={tmp_path}", *protos)
    assert result.returncode == 0, result.stderr
    generated = sorted(p.name for p in (tmp_path / "pretrade" / "v1").iterdir())
    committed = sorted(p.name for p in (ROOT / "src" / "pretrade" / "v1").iterdir()
                       if p.suffix in (".py", ".pyi") and p.name != "__init__.py")
    assert generated == committed
    assert {"risk_pb2.py", "records_pb2.py"} <= set(generated)
    for name in generated:
        committed = ROOT / "src" / "pretrade" / "v1" / name
        assert filecmp.cmp(tmp_path / "pretrade" / "v1" / name, committed, shallow=False), (
            f"{committed} differs from the proto; run `make proto` and commit")


def test_generated_code_imports_absolutely_without_rewriting():
    grpc_module = (ROOT / "src" / "pretrade" / "v1" / "risk_pb2_grpc.py").read_text()
    assert "from pretrade.v1 import risk_pb2" in grpc_module


def test_every_reject_code_has_its_own_message():
    from pretrade.api.status import describe_rejection
    from pretrade.v1 import risk_pb2 as pb

    for code in pb.RejectCode.values():
        if code != pb.REJECT_CODE_UNSPECIFIED:
            assert not describe_rejection(code, 1, 2).startswith("rejected with code"), (
                pb.RejectCode.Name(code))


def test_the_package_ships_its_license_and_its_type_marker():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert (ROOT / "src" / "pretrade" / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["pretrade"]
