"""A one-line text progress bar for the command line (simulate, the benchmark); no dependency."""

from __future__ import annotations

import sys

__all__ = ["draw_progress"]


def draw_progress(done: int, total: int, unit: str, suffix: str = "", *, width: int = 30) -> None:
    """Redraw ``[####....] done/total unit suffix`` in place on stderr."""
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit}{suffix}")
    sys.stderr.flush()
