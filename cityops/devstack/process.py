"""Daemons the stack starts itself, remembered by pid file so `stack down` stops exactly those."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cityops.devstack.errors import PortTimeout, StackError


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, *, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise PortTimeout(f"nothing listens on {host}:{port} after {timeout:.0f}s{tail}")


@dataclass
class Daemon:
    """A long-running process started detached, with its pid file and log in the state dir.

    ``marker`` is a string that must appear in the process's command line; it guards against
    signalling an unrelated process that reused a stale pid.
    """

    name: str
    pid_file: Path
    log_file: Path
    marker: str

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except FileNotFoundError:
            return None
        if self.marker not in cmdline:
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:  # exited in between
            return None
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie is not running
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, argv: list[str], *, env: dict[str, str] | None = None) -> int:
        pid = self.pid()
        if pid is not None:
            return pid
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not killed by the terminal's Ctrl-C; `stack down` stops it
                env={**os.environ, **(env or {})},
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        # Popen returns once the child is forked, before it has exec'd: until then its command
        # line is ours and pid() would call it not running. Wait for the exec (or its death).
        deadline = time.monotonic() + 10
        while self.pid() is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return proc.pid

    def stop(self, *, timeout: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``. Returns whether a process was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            _reap(pid)
            time.sleep(0.1)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> bool:
        """Send ``sig`` (a crash or a freeze, for fault tests); after SIGKILL, wait until the
        process is gone. Returns whether a process got the signal."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            deadline = time.monotonic() + 10
            while self.pid() is not None and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.05)
        return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def run(
    argv: list[str],
    *,
    what: str,
    user: str | None = None,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
) -> str:
    """Run a setup command to completion; a failure raises StackError with its output."""
    if user is not None and os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    proc = subprocess.run(
        argv,
        input=input_text,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise StackError(f"{what} failed ({' '.join(argv)}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout
