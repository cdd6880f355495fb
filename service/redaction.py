"""Masks configured secret values wherever they could still reach output: events, stdout, stream, logs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

MASK = "********"
# Shorter values are not masked: they would blank out ordinary words all over the output.
MIN_SECRET_LENGTH = 6


class Redactor:
    """One precompiled alternation of every secret value, longest first (a value that contains another
    is masked whole). With no secrets it does nothing, at no cost."""

    def __init__(self, secrets: Iterable[str]) -> None:
        kept = {value for value in secrets if len(value) >= MIN_SECRET_LENGTH}
        # Also as Ansible prints a string inside JSON output (quotes, backslashes, newlines escaped).
        kept |= {json.dumps(value)[1:-1] for value in kept}
        values = sorted(kept, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def text(self, value: str) -> str:
        return value if self._pattern is None else self._pattern.sub(MASK, value)

    def data(self, value: Any) -> Any:
        """The same JSON-like structure with every string (keys included) masked."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self._pattern.sub(MASK, value)
        if isinstance(value, dict):
            return {self.data(key): self.data(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(item) for item in value]
        return value


NO_SECRETS = Redactor(())
