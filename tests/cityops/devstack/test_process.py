import subprocess
import sys
import time
from pathlib import Path

from cityops.devstack.process import Daemon


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


def test_postgres_does_not_take_a_stale_lock_files_pid_for_its_own(tmp_path: Path) -> None:
    from cityops.devstack.postgres import Postgres

    pg = Postgres(tmp_path, "127.0.0.1", 1, user="u", password="p", database="d")
    pg.data.mkdir(parents=True)
    lock = pg.data / "postmaster.pid"
    script = "import time; time.sleep(60)"
    foreign = subprocess.Popen([sys.executable, "-c", script])  # e.g. a pid reused after a reboot
    ours = subprocess.Popen(  # a process named postgres whose working directory is the data dir
        ["bash", "-c", f'exec -a /usr/lib/postgresql/15/bin/postgres {sys.executable} -c "{script}" -D data'],
        cwd=pg.data,
    )
    try:
        lock.write_text(f"{foreign.pid}\n{pg.data}\n")
        assert pg.pid() is None and not pg.running()
        lock.write_text(f"{ours.pid}\n{pg.data}\n")
        deadline = time.monotonic() + 5
        while pg.pid() is None and time.monotonic() < deadline:  # until bash has exec'd
            time.sleep(0.05)
        assert pg.pid() == ours.pid
    finally:
        for proc in (foreign, ours):
            proc.kill()
            proc.wait()
