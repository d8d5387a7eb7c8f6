"""Debian packages the local stack needs, installed on first `stack up`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from cityops.devstack.errors import StackError

PACKAGES = ["mosquitto", "postgresql-15", "postgresql-15-postgis-3", "maven", "openjdk-17-jre-headless"]

_POLICY_RC = Path("/usr/sbin/policy-rc.d")


def missing_packages(names: list[str] = PACKAGES) -> list[str]:
    missing = []
    for name in names:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False)
        if "install ok installed" not in proc.stdout:
            missing.append(name)
    return missing


def ensure_packages(names: list[str] = PACKAGES) -> list[str]:
    """apt-get install what is missing; returns what was installed.

    Package scripts are told not to start system services (policy-rc.d exit 101): the stack
    runs its own Mosquitto and PostgreSQL with its own configuration and ports.
    """
    missing = missing_packages(names)
    if not missing:
        return []
    if shutil.which("apt-get") is None:
        raise StackError(f"missing packages {missing} and no apt-get to install them")
    if os.geteuid() != 0:
        raise StackError(f"missing packages {missing}: run `cityops stack up` as root once to install them")
    placed_policy = False
    if not _POLICY_RC.exists():
        _POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        _POLICY_RC.chmod(0o755)
        placed_policy = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                raise StackError(f"{' '.join(argv)} failed:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    finally:
        if placed_policy:
            _POLICY_RC.unlink(missing_ok=True)
    return missing
