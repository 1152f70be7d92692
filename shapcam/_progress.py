"""One place for progress bars: tqdm when it is installed and wanted, else a silent stand-in."""
from __future__ import annotations

import sys


class _Silent:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def progress_bar(total: int, enabled=None, *, desc: str, unit: str, auto_min: int = 2):
    """A tqdm bar over ``total`` units. enabled: True / False, or None for "only when total >=
    auto_min and stderr is a terminal". Without tqdm, or when off, a stand-in that does nothing."""
    if enabled is False or (enabled is None and not (total >= auto_min and sys.stderr.isatty())):
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Silent()
    return tqdm(total=total, desc=desc, unit=unit, leave=False)
