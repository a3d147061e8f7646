"""A one-line text progress bar for the command line (simulate, the benchmark).

Kept rather than tqdm or rich: it is one function of four lines, its output is part of what `callscope
simulate` prints (tqdm's bar looks different), and a progress library would be a runtime dependency of the
collector image for a line of text.
"""

from __future__ import annotations

import sys

__all__ = ["draw_progress"]


def draw_progress(done: int, total: int, unit: str, suffix: str = "", *, width: int = 30) -> None:
    """Redraw ``[####....] done/total unit suffix`` in place on stderr."""
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit}{suffix}")
    sys.stderr.flush()
