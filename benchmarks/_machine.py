"""Machine description shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform


def _cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform reports."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_mhz() -> float | None:
    """The first core's current clock from /proc/cpuinfo (None where there is none)."""
    mhz = _cpuinfo("cpu MHz")
    try:
        return float(mhz) if mhz else None
    except ValueError:
        return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other jobs on a shared machine skew timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
