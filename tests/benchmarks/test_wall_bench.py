"""The wall benchmark end to end on a tiny city, against the real stack: every figure printed
last as ``name: value unit``, with the index and without it giving the same device states (the
run checks that itself) and the silent tenth of the city found offline."""

from __future__ import annotations

import re

import pytest

from benchmarks import wall as bench
from cityops.devstack import Stack

FIGURE = re.compile(r"^(?P<name>[a-z0-9_]+): (?P<value>[-+0-9.eE]+) (?P<unit>\S.*)$")


@pytest.mark.slow
def test_the_wall_benchmark_prints_its_figures(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--devices", "200", "--metrics", "2", "--history-min", "90", "--repeats", "2"])
    lines = capsys.readouterr().out.strip().splitlines()[-7:]  # service logs come before
    figures = {m["name"]: float(m["value"]) for line in lines if (m := FIGURE.match(line))}
    assert len(figures) == 7, lines
    assert figures["wall_rollup_rows"] == 200 * 2 * 90 - 20 * 2 * 30  # a tenth silent for the last 30 min
    assert figures["wall_devices_offline"] == 20
    assert all(v > 0 for v in figures.values())
