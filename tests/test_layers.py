"""The layer rules in pyproject.toml: they hold on the tree, and a breach of each is caught."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import cityops.core

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["cityops", "gateway", "stream", "ioc", "firmware_sim", "dashboards"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_tree_keeps_every_rule() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_dashboards_rule_forbids_every_core_module_but_the_contracts() -> None:
    # A forbidden-list is an allow-list only while it names every other core module.
    core = {f"cityops.core.{m.name}" for m in pkgutil.iter_modules(cityops.core.__path__)}
    assert set(_contracts()["dashboards"]["forbidden_modules"]) == core - {"cityops.core.contracts"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("gateway/breach.py", "import stream.detectors", "Tiers never import each other"),
        ("cityops/core/breach.py", "import ioc.transitions", "The shared core imports no tier"),
        ("ioc/breach.py", "import cityops.devstack", "Tiers use the shared core"),
        ("cityops/devstack/breach.py", "import cityops.app.cli", "The dev stack imports no tier"),
        ("dashboards/breach.py", "import cityops.core.schema", "dashboards reads only the contracts"),
    ],
)
def test_a_breach_fails_the_lint(tmp_path: Path, module: str, line: str, contract: str) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc", "vendor", "*.png"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / module).write_text(f"{line}\n")
    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout, result.stdout
    assert "1 broken" in result.stdout, result.stdout
