"""What ships: the wheel and the image carry the product, not its benchmarks or tests, and every
place that reports the version reports pyproject.toml's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import cityops
from ioc import create_app

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_command_and_the_api_report_the_projects_version() -> None:
    assert cityops.__version__ == VERSION
    printed = subprocess.run(
        [sys.executable, "-m", "cityops", "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert printed.stdout.strip() == f"cityops {VERSION}"
    assert create_app(feed=False).version == VERSION


def test_the_wheel_ships_the_product_only(tmp_path: Path) -> None:
    # Built from a copy of what git tracks: setuptools writes build/ into the tree it builds.
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    (wheel,) = tmp_path.glob("cityops-*.whl")
    assert wheel.name.startswith(f"cityops-{VERSION}-")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("cityops-")}
    assert tops == {"cityops", "gateway", "stream", "ioc", "firmware_sim", "dashboards"}
    for shipped in (
        "cityops/core/contracts.py",
        "cityops/devstack/kafka-pom.xml",
        "cityops/app/cli.py",
        "stream/profiles.toml",
        "dashboards/wall/index.html",
        "firmware_sim/scenarios/demo.toml",
    ):
        assert shipped in names


def test_the_image_copies_the_product_only() -> None:
    copied = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")]
    assert set(copied) == {"pyproject.toml", "cityops", "gateway", "stream", "ioc", "firmware_sim", "dashboards"}
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"benchmarks", "tests"} <= set(ignored)
