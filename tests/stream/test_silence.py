"""Stream time and who fell silent, on the detector alone (the service's tests run them on Kafka)."""

from __future__ import annotations

import numpy as np

from stream.detectors import Detector
from stream.series import SeriesIndex
from stream.silence import Progress, Silence

T0 = 1_795_000_000_000_000


def test_stream_time_is_the_pipelines_progress() -> None:
    """The newest reading's time in the partition furthest behind (after a backlog partitions
    catch up unevenly: the demo's replay once raised false "offline" alerts), advanced by the
    clock only over time the partition was known read to its end."""
    wall = T0 + 3_600_000_000
    progress = Progress()
    assert progress.stream_time() is None
    progress.saw(0, T0 + 600_000_000, wall)  # partition 0 has caught up to T0 + 10 min
    progress.saw(1, T0 + 30_000_000, wall)  # partition 1 is still at T0 + 30 s
    progress.saw(1, T0 + 20_000_000, wall)  # a late reading does not move time back
    assert progress.stream_time() == T0 + 30_000_000
    wall += 5_000_000  # 5 s later, nothing new read, nothing known to be left unread either:
    assert progress.stream_time() == T0 + 30_000_000  # a lagging or paused consumer; time stands still
    progress.drained(0, wall)
    progress.drained(1, wall - 2_000_000)  # read to its end as of 2 s ago
    assert progress.stream_time() == T0 + 33_000_000
    progress.forget(1)  # partition 1 moved to another consumer
    assert progress.stream_time() == T0 + 605_000_000


def test_a_partition_whose_backlog_is_unknown_stops_all_judgement() -> None:
    """Just assigned (after a rebalance), a partition's series are restored but its backlog is
    not read yet: judging them against the other partitions' time would call them all silent."""
    wall = T0 + 60_000_000
    progress = Progress()
    progress.assign([0, 1])
    progress.saw(0, T0 + 59_000_000, wall)
    assert progress.stream_time() is None  # partition 1: nothing read, not known empty
    progress.drained(1, wall - 30_000_000)  # read to its end, and empty, as of 30 s ago
    assert progress.stream_time() == T0 + 30_000_000
    progress.drained(0, wall + 10_000_000)
    progress.drained(1, wall + 10_000_000)
    assert progress.stream_time() == T0 + 69_000_000


def _city(devices: int, metrics: tuple[str, ...] = ("pressure_kpa", "flow_m3h")) -> tuple[Detector, SeriesIndex]:
    detector, series = Detector(), SeriesIndex()
    sids, ts = [], []
    for i in range(40):
        for d in range(devices):
            for m in metrics:
                sids.append(series.id(f"d{d}", m))
                ts.append(T0 + i * 1_000_000)
    for sid in range(len(series)):
        detector.bind(sid, "pipe_node", series.key(sid)[1])
    n = len(sids)
    detector.update(np.array(sids, np.int64), np.array(ts, np.int64), np.random.default_rng(1).normal(400, 1, n))
    return detector, series


def test_a_silent_device_is_one_silence_and_the_feed_is_one() -> None:
    detector, series = _city(30)
    silence = Silence(mass_share=0.5, mass_min_devices=10)
    # One device's readings stop at 39 s; the rest report on, for a minute more.
    rest = [s for s in range(len(series)) if series.key(s)[0] != "d0"]
    for i in range(40, 100):
        detector.update(np.array(rest, np.int64), np.full(len(rest), T0 + i * 1_000_000), np.full(len(rest), 400.0))
    found = silence.judge(detector, series, T0 + 100_000_000)
    assert [(series.key(sid), n) for sid, n in found.devices] == [(("d0", "pressure_kpa"), 2)]
    assert found.metrics == [] and found.feed is None
    assert silence.judge(detector, series, T0 + 160_000_000).feed is not None  # everyone else, at once
    again = silence.judge(detector, series, T0 + 220_000_000)
    assert again.devices == [] and again.feed is None  # once per silence
