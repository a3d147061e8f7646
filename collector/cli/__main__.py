"""``python -m collector.cli``: the same as the ``callscope`` command."""

import sys

from collector.cli.commands import main

if __name__ == "__main__":   # importing this module (as .ci/check_install.py does) runs nothing
    sys.exit(main())
