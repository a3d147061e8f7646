"""The command line on top of everything: ``callscope serve | migrate | simulate | dashboards | health | doctor``.

commands.py parses flags and calls one library function per command; doctor.py holds the checks of
``callscope doctor`` / ``health`` and the one-line descriptions of failures users meet; progress.py draws the
progress bar. This is the only package that may import dashboards/ (tests/test_layers.py).
"""

from __future__ import annotations

from collector.cli.commands import main

__all__ = ["main"]
