"""The water network: an EPANET model run by WNTR, with leaks and bursts as extra outflows.

Pressures and flows at every junction and pipe come from the hydraulic solver, so a leak
changes what every pipe-node sensor sees by as much as the network's hydraulics say, not
just at the leaking node. A run covers one epoch at a fixed step; readings between steps
are interpolated linearly.

A leak is modelled as a demand at its junction whose pattern ramps from zero to the peak
outflow (a burst jumps to it at once). This is demand-driven (EPANET's DDA): the outflow
does not fall with pressure as an orifice's would, which is conservative for leaks of a
few litres per second and keeps the run fast (about 0.05 s per simulated day on Net3).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from firmware_sim.errors import ScenarioError

G = 9.80665  # m/s2: metres of water -> kPa


@dataclass(frozen=True)
class Leak:
    junction: str
    start_s: float  # from the start of the run
    end_s: float
    peak_lps: float  # litres per second at full size
    ramp_s: float  # seconds to grow to full size; 0 for a burst


@dataclass(frozen=True)
class HydraulicRun:
    step_s: float
    pressure_kpa: npt.NDArray[np.float64]  # [time step, junction]
    flow_m3h: npt.NDArray[np.float64]  # [time step, link]

    def _weights(self, t_s: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        pos = np.clip(t_s / self.step_s, 0, self.pressure_kpa.shape[0] - 1.000001)
        i = pos.astype(np.intp)
        return i, pos - i

    def pressure(self, t_s: npt.NDArray[np.float64], junction: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        i, w = self._weights(t_s)
        p = self.pressure_kpa
        return p[i, junction] * (1 - w) + p[i + 1, junction] * w

    def flow(self, t_s: npt.NDArray[np.float64], link: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        i, w = self._weights(t_s)
        f = self.flow_m3h
        return f[i, link] * (1 - w) + f[i + 1, link] * w


class WaterNetwork:
    """An EPANET network: its junctions (where pipe-node sensors sit), pipes and layout."""

    def __init__(self, model: str) -> None:
        import wntr

        path = Path(model)
        if not path.suffix:
            path = Path(wntr.__file__).parent / "library" / "networks" / f"{model}.inp"
        if not path.exists():
            raise ScenarioError(f"no water network model {model!r} (looked for {path})")
        self.path = path
        wn = wntr.network.WaterNetworkModel(str(path))
        self.junctions: list[str] = list(wn.junction_name_list)
        self.links: list[str] = list(wn.link_name_list)
        self.coordinates = np.array([wn.get_node(n).coordinates for n in self.junctions], dtype=np.float64)
        link_index = {name: i for i, name in enumerate(self.links)}
        # The pipe a node's flow meter sits on: the largest-diameter pipe at the junction.
        self.junction_pipe = np.empty(len(self.junctions), dtype=np.intp)
        for j, name in enumerate(self.junctions):
            pipes = [wn.get_link(n) for n in wn.get_links_for_node(name)]
            best = max(pipes, key=lambda p: (getattr(p, "diameter", 0.0), p.name))
            self.junction_pipe[j] = link_index[best.name]
        self._wn = wn

    def simulate(self, *, horizon_s: float, step_s: float, day_offset_s: float, leaks: list[Leak]) -> HydraulicRun:
        """Run ``horizon_s`` seconds; ``day_offset_s`` is the local time of day at the start."""
        import wntr

        wn = wntr.network.WaterNetworkModel(str(self.path))
        opts = wn.options.time
        old_step = opts.pattern_timestep
        factor = old_step / step_s
        if factor < 1 or not math.isclose(factor, round(factor)):
            raise ScenarioError(f"hydraulic step {step_s} s must divide the network's pattern step {old_step} s")
        shift = round(day_offset_s / step_s)
        for name in wn.pattern_name_list:
            pattern = wn.get_pattern(name)
            mult = np.repeat(np.asarray(pattern.multipliers, dtype=float), round(factor))
            pattern.multipliers = list(np.roll(mult, -shift))
        steps = math.ceil(horizon_s / step_s) + 1
        opts.pattern_timestep = step_s
        opts.hydraulic_timestep = step_s
        opts.report_timestep = step_s
        opts.duration = (steps - 1) * step_s
        opts.quality_timestep = step_s
        wn.options.quality.parameter = "NONE"
        for i, leak in enumerate(leaks):
            t = np.arange(steps + 1) * step_s
            if leak.ramp_s > 0:
                shape = np.clip((t - leak.start_s) / leak.ramp_s, 0.0, 1.0)
            else:
                shape = (t >= leak.start_s).astype(float)
            shape[t >= leak.end_s] = 0.0
            name = f"cityops-leak-{i}"
            wn.add_pattern(name, list(shape))
            wn.get_node(leak.junction).demand_timeseries_list.append((leak.peak_lps / 1000.0, name))
        with tempfile.TemporaryDirectory(prefix="cityops-epanet-") as tmp:
            results = wntr.sim.EpanetSimulator(wn).run_sim(file_prefix=str(Path(tmp) / "run"))
        pressure = results.node["pressure"][self.junctions].to_numpy(dtype=np.float64) * G
        flow = results.link["flowrate"][self.links].to_numpy(dtype=np.float64) * 3600.0
        return HydraulicRun(step_s, pressure, flow)
