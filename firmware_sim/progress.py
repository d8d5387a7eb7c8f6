"""The live display of `cityops sim`, and the figures it ends with."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cityops.core import log
from cityops.core.contracts import to_datetime
from firmware_sim.links import Stats
from firmware_sim.simulator import Simulator

_log = log.get("sim")


class Progress:
    """Redraws twice a second on a terminal; elsewhere (a log file) logs a line every 10 s."""

    def __init__(self, simulator: Simulator, console: Console) -> None:
        self._sim = simulator
        self._console = console
        self._live = Live(console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
        self._started = time.monotonic()
        self._last = (self._started, 0, 0)
        self._rates = (0.0, 0.0)
        self._logged = self._started

    def __enter__(self) -> Progress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(kind, exc, tb)

    def update(self, stats: Stats) -> None:
        now = time.monotonic()
        then, sent, acked = self._last
        if now - then >= 1.0:
            self._rates = ((stats.sent - sent) / (now - then), (stats.acked - acked) / (now - then))
            self._last = (now, stats.sent, stats.acked)
        if self._live is not None:
            self._live.update(self._table(stats))
        elif now - self._logged >= 10.0:
            self._logged = now
            _log.info(
                "simulating",
                connected=stats.connected,
                links=stats.links,
                sent=stats.sent,
                acked=stats.acked,
                sent_per_s=round(self._rates[0]),
                buffered=stats.buffered,
                dropped=stats.dropped,
                injected=stats.injected,
            )

    def _table(self, stats: Stats) -> Table:
        sim = self._sim.sim
        clock = to_datetime(sim.cursor).strftime("%Y-%m-%d %H:%M:%S UTC") if sim else "-"
        table = Table(title=f"cityops sim: {self._sim.scenario.mode} mode", show_header=False, box=None)
        table.add_row("simulated clock", clock)
        table.add_row("devices", f"{stats.devices:,}")
        table.add_row("connected", f"{stats.connected:,} of {stats.links:,} sessions")
        table.add_row("readings sent", f"{stats.sent:,}  ({self._rates[0]:,.0f}/s)")
        table.add_row("acknowledged", f"{stats.acked:,}  ({self._rates[1]:,.0f}/s)")
        table.add_row("buffered", f"{stats.buffered:,}  (dropped {stats.dropped:,}, reconnects {stats.reconnects:,})")
        injected = ", ".join(f"{k} {v}" for k, v in sorted(stats.injected.items())) or "none yet"
        table.add_row("injected", injected)
        table.add_row("bad messages sent", f"{stats.platform_faults:,}")
        return table

    def report(self, stats: Stats) -> None:
        """The load-test figures: what was sent, what the broker acknowledged, at what rate."""
        elapsed = time.monotonic() - self._started
        lines = [
            f"elapsed: {elapsed:.1f} s",
            f"devices: {stats.devices} devices",
            f"sent: {stats.sent} readings",
            f"acknowledged: {stats.acked} readings",
            f"acknowledged_values: {stats.values_acked} values",
            f"dropped: {stats.dropped} readings",
            f"achieved_rate: {stats.acked / elapsed if elapsed else 0:.0f} readings/s",
        ]
        lines += [f"injected_{k}: {v} events" for k, v in sorted(stats.injected.items())]
        print("\n".join(lines))
