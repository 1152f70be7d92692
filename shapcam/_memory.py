"""Peak resident memory of a call, for the scale tests and benchmarks (Linux: /proc)."""
from __future__ import annotations

import os


def _status_kb(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def peak_growth(fn):
    """(fn(), MB by which this process's peak resident memory rose while fn ran). The kernel's
    peak (VmHWM) is reset to the current RSS first, so earlier transient peaks (imports) do not
    hide the call's. Elsewhere than Linux: (fn(), None)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return fn(), None
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status_kb("VmRSS")
    out = fn()
    return out, (_status_kb("VmHWM") - base) / 1024
