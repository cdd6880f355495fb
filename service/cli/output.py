"""What the `ars` commands print, for people and scripts."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
