"""The IOC benchmark end to end on tiny sizes, against the real stack: every figure printed last
as ``name: value unit`` with a positive finite value, and the run's own checks: every alert
placed in an incident (one per cabinet in the burst), every event delivered to every fast
client, the slow client dropped while the alerts went on and, once it read, its events in order
then the resync notice and close code 1013; the resume delivered exactly the missed events."""

from __future__ import annotations

import logging
import math
import re
import time

import pytest

from benchmarks import ioc as bench
from cityops.devstack import Stack

FIGURE = re.compile(r"^(?P<name>[a-z0-9_]+): (?P<value>[-+0-9.eE]+|nan) (?P<unit>\S.*)$")

RESUME_EVENTS = 60
CABINETS = 2
# Batches of 3 alerts publish at most 6 events at once, well inside a queue of 12; 70 of them
# publish a few hundred, enough to fill the slow client's buffers (about 200 KB) and its queue.
TINY = [
    "--cabinets", str(CABINETS),
    "--lamps-per-cabinet", "20",
    "--burst-batch", "10",
    "--city", "60",
    "--scattered-alerts", "60",
    "--scattered-batch", "10",
    "--clients", "4",
    "--fanout-batches", "70",
    "--fanout-batch", "3",
    "--fanout-gap", "0.01",
    "--ws-queue-size", "12",
    "--resume-events", str(RESUME_EVENTS),
    "--repeats", "2",
]  # fmt: skip

EXPECTED = {
    **{
        f"ioc_ingest_{kind}{what}": unit
        for kind in ("burst", "scattered")
        for what, unit in (
            ("", "alerts/s"),
            ("_batch_p50", "ms"),
            ("_batch_p99", "ms"),
            ("_batch_p50_first_tenth", "ms"),
            ("_batch_p50_last_tenth", "ms"),
            ("_incidents", "incidents"),
        )
    },
    "ioc_ingest_scattered_jit_on": "alerts/s",
    "ioc_ingest_scattered_jit_on_batch_p50": "ms",
    "ioc_ingest_scattered_jit_on_batch_p99": "ms",
    **{
        f"ioc_ws_fanout_{what}{run}": unit
        for run in ("", "_with_slow_client")
        for what, unit in (("p50", "ms"), ("p99", "ms"), ("max", "ms"), ("delivered", "%"))
    },
    "ioc_ws_slow_client_events_before_resync": "events",
    f"ioc_resume_{RESUME_EVENTS}_events": "ms",
    "ioc_snapshot_connect": "ms",
    "ioc_snapshot_size": "KiB",
}


def test_tiny_run_prints_every_figure_and_passes_its_checks(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    started = time.monotonic()
    try:
        report = bench.main(TINY)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    took = time.monotonic() - started

    lines = capsys.readouterr().out.splitlines()
    tail = [FIGURE.match(line) for line in lines[-len(report.figures) :]]
    assert all(tail), lines[-len(report.figures) :]
    printed = {m["name"]: (float(m["value"]), m["unit"]) for m in tail if m}
    assert list(printed) == [f.name for f in report.figures]
    assert {name: unit for name, (_, unit) in printed.items()} == EXPECTED
    for name, (value, _) in printed.items():
        assert math.isfinite(value) and value > 0, (name, value)

    checks = report.checks
    assert checks.burst_alerts_unplaced == 0
    assert checks.scattered_alerts_unplaced == 0
    assert printed["ioc_ingest_burst_incidents"][0] == CABINETS  # each cabinet's lamps: one incident
    assert printed["ioc_ingest_burst_batch_p50"][0] <= printed["ioc_ingest_burst_batch_p99"][0]
    # Every fast client had every event, with the slow client present or not.
    assert checks.fanout_missing == 0
    assert checks.fanout_missing_with_slow_client == 0
    assert printed["ioc_ws_fanout_delivered"][0] == 100
    assert printed["ioc_ws_fanout_delivered_with_slow_client"][0] == 100
    for run in ("", "_with_slow_client"):
        assert printed[f"ioc_ws_fanout_p50{run}"][0] <= printed[f"ioc_ws_fanout_p99{run}"][0]
    # The slow client was dropped during the run; reading at last, it found its events in order,
    # then the resync notice and 1013: more than its queue's worth (the TCP buffers held the rest).
    assert checks.slow_client_dropped
    assert checks.slow_client_resync
    assert checks.slow_client_in_order
    assert printed["ioc_ws_slow_client_events_before_resync"][0] > 12
    assert checks.resume_exact
    assert took < 60, f"the tiny run took {took:.0f} s"
