"""One figure of a benchmark, printed as ``name: value unit`` (the format every benchmark ends with)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    note: str = ""

    def text(self) -> str:
        """The value with as many digits as it deserves, and its unit."""
        v = self.value
        if not math.isfinite(v):
            s = "nan"
        elif abs(v) >= 100:
            s = f"{v:.0f}"
        elif abs(v) >= 10:
            s = f"{v:.1f}"
        elif abs(v) >= 1:
            s = f"{v:.2f}"
        else:
            s = f"{v:.3g}"
        return f"{s} {self.unit}"
