"""``python -m i2dl <stage> [arguments]`` (also the ``i2dl`` console script)."""

from __future__ import annotations

import sys

from i2dl.cli import main

if __name__ == "__main__":
    sys.exit(main())
