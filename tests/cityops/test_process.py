import subprocess
import sys
from pathlib import Path

from cityops.stack.process import Daemon


def test_daemon_stops_what_it_started_and_nothing_else(tmp_path: Path) -> None:
    d = Daemon("sleeper", tmp_path / "s.pid", tmp_path / "s.log", marker="cityops-test-marker")
    pid = d.start([sys.executable, "-c", "import time; time.sleep(60)", "cityops-test-marker"])
    assert d.running() and d.pid() == pid
    assert d.start(["false"]) == pid  # idempotent: a running daemon is not started twice
    assert d.stop(timeout=5)
    assert not d.running() and not d.pid_file.exists()

    # A stale pid file pointing at an unrelated process must not get that process killed.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        d.pid_file.write_text(f"{other.pid}\n")
        assert d.pid() is None
        assert d.stop(timeout=1) is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
