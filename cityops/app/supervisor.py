"""`cityops run`: the stack, the services and a simulated city, supervised until Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import websockets
from rich.console import Console
from rich.panel import Panel

from cityops.core.errors import EXIT_FATAL
from cityops.core.settings import API_PORT, GATEWAY_METRICS_PORT, STREAM_METRICS_PORT
from cityops.devstack import Stack, StackSettings

SERVICES = ["api", "stream", "gateway", "sim"]
MAX_RESTARTS = 5
RESTART_WINDOW_S = 120.0


# Exits after which a restart only repeats the failure: EXIT_FATAL, and 2 (a refused command line).
FINAL_EXITS = frozenset({EXIT_FATAL, 2})


def restart_delay(exit_code: int | None, recent_restarts: int) -> float | None:
    """Seconds to wait before restarting a service that exited, or None to give up: at once
    when it said restarting cannot help (``FINAL_EXITS``), else after ``MAX_RESTARTS`` within
    ``RESTART_WINDOW_S``, backing off exponentially."""
    if exit_code in FINAL_EXITS or recent_restarts >= MAX_RESTARTS:
        return None
    return float(2**recent_restarts)


class Child:
    def __init__(self, name: str, log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cityops", self.name],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "CITYOPS_LOG_FORMAT": "json", **self.env},
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children in order
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_city(*, scenario: Path | None, console: Console) -> None:
    stack = Stack(StackSettings())
    was_running = all(c.reachable for c in stack.status())
    started = time.monotonic()
    with console.status("stack up") as status:
        stack.up(progress=lambda step: status.update(f"stack up: {step}"))
    console.print(f"stack ready in {time.monotonic() - started:.1f} s (state: {stack.settings.state_dir})")

    log_dir = stack.settings.state_dir / "logs"
    env = {"CITYOPS_SIM_SCENARIO": str(scenario)} if scenario else {}
    children = [Child(name, log_dir, env) for name in SERVICES]
    api_url = f"http://127.0.0.1:{API_PORT}"
    try:
        for child in children:
            child.start()
            if child.name == "api":
                _wait_http(f"{api_url}/healthz", child, timeout=60)
        console.print(
            Panel.fit(
                f"wall screen   {api_url}/   (1920x1080 and up)\n"
                f"crew phone    {api_url}/field/\n"
                f"API docs      {api_url}/docs\n"
                f"wall (WS)     ws://127.0.0.1:{API_PORT}/ws/wall?token=...\n"
                "log in as     viewer, operator, dispatcher, admin or crew-w1 (development: password = name)\n"
                f"metrics       {api_url}/metrics  http://127.0.0.1:{GATEWAY_METRICS_PORT}/metrics  "
                f"http://127.0.0.1:{STREAM_METRICS_PORT}/metrics\n"
                f"logs          {log_dir}/\n"
                f"city          {scenario or 'the demo scenario'}; ground truth in "
                f"{stack.settings.state_dir / 'ground_truth.jsonl'}\n"
                "Ctrl-C stops everything this command started.",
                title="cityops is running",
            )
        )
        if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin":
            import webbrowser

            webbrowser.open(f"{api_url}/")  # a desktop: put the wall screen up
        try:
            asyncio.run(_watch(children, api_url, console))
        except KeyboardInterrupt:
            pass
    finally:
        console.print("stopping services")
        for child in reversed(children):
            child.stop()
        if not was_running:
            console.print("stopping the stack")
            stack.down()


def _wait_http(url: str, child: Child, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise SystemExit(f"{child.name} exited during start-up; see {child.log}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{child.name} did not answer {url} within {timeout:.0f} s; see {child.log}")


def _login(api_url: str, user: str) -> str:
    """A development demo user's token (the password is the user name)."""
    import urllib.parse
    import urllib.request

    form = urllib.parse.urlencode({"username": user, "password": user}).encode()
    with urllib.request.urlopen(f"{api_url}/token", data=form, timeout=5) as resp:
        return str(json.loads(resp.read())["access_token"])


async def _watch(children: list[Child], api_url: str, console: Console) -> None:
    """Print incidents as they form and change; restart a service that dies (give up after repeated crashes)."""
    ws_base = api_url.replace("http://", "ws://")
    last: int | None = None
    restarts: dict[str, list[float]] = {c.name: [] for c in children}
    while True:
        for child in children:
            if child.alive():
                continue
            code = child.proc.returncode if child.proc is not None else None
            recent = [t for t in restarts[child.name] if time.monotonic() - t < RESTART_WINDOW_S]
            delay = restart_delay(code, len(recent))
            if delay is None:
                why = "on an error restarting cannot fix" if code in FINAL_EXITS else f"{len(recent) + 1} times"
                console.print(f"[red]{child.name} exited (code {code}) {why}; see {child.log}[/red]")
                return
            console.print(f"[red]{child.name} exited with code {code}; restarting in {delay:.0f} s ({child.log})[/red]")
            await asyncio.sleep(delay)
            recent.append(time.monotonic())
            restarts[child.name] = recent
            child.start()
        try:
            token = await asyncio.to_thread(_login, api_url, "dispatcher")
            resume = "" if last is None else f"&last_event_id={last}"
            async with websockets.connect(f"{ws_base}/ws/wall?token={token}{resume}") as ws:
                while all(c.alive() for c in children):
                    try:
                        raw = await asyncio.wait_for(ws.recv(), timeout=1.0)
                    except TimeoutError:
                        continue
                    msg = json.loads(raw)
                    last = msg.get("id", last)
                    _show(msg, console)
        except (OSError, websockets.ConnectionClosed):
            await asyncio.sleep(1.0)


def _show(msg: dict[str, Any], console: Console) -> None:
    kind = msg.get("type")
    if kind == "incident":
        i = msg["incident"]
        crew = f" crew {i['crew_id']}" if i.get("crew_id") else ""
        console.print(
            f"[yellow]incident #{i['incident_id']}[/yellow] {i['state']:<12} severity {i['severity']} "
            f"{i['title']}{crew} ({i['alert_count']} alerts)"
        )
    elif kind == "escalation":
        i = msg["incident"]
        console.print(f"[red]escalation[/red] incident #{i['incident_id']}: {msg['note']}")
    elif kind == "snapshot":
        console.print(f"[green]connected[/green]: {len(msg['incidents'])} incidents today, {len(msg['crews'])} crews")
