"""The masking of secret values itself: forms of a value, and log lines (events are covered end to end in
test_security.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from service.redaction import MASK, Redactor
from tests.support import ROOT


def test_every_form_of_a_secret_is_masked() -> None:
    secret = 'pa"ss\\word\nline2'
    redactor = Redactor([secret, "short", 'pa"ss\\word\nline2-longer'])
    # Raw, as Ansible prints it inside JSON, inside a longer value, in keys and nested structures.
    assert redactor.text(f"x {secret} y") == f"x {MASK} y"
    assert redactor.text(json.dumps({"msg": secret})) == json.dumps({"msg": "X"}).replace("X", MASK)
    assert redactor.text(secret + "-longer") == MASK  # the longest value wins
    assert redactor.data({secret: [1, {"k": f"<{secret}>"}], "n": 3}) == {
        MASK: [1, {"k": f"<{MASK}>"}],
        "n": 3,
    }
    # Values under 6 characters would mask ordinary words everywhere: they are left alone.
    assert redactor.text("short") == "short"
    assert Redactor([]).text(secret) == secret


def test_log_lines_are_masked() -> None:
    secret = "s3cr3t-value-in-a-log"
    script = (
        "import logging, structlog\n"
        "from service.config import Settings\n"
        "from service.logging import configure_logging\n"
        "from service.redaction import Redactor\n"
        f"configure_logging(Settings(log_format='json'), Redactor([{secret!r}]))\n"
        f"structlog.get_logger('t').warning('connect failed: {secret}', url='redis://:{secret}@h')\n"
        f"logging.getLogger('ansible-runner').error('stdlib says {secret}')\n"
        "try:\n"
        f"    raise RuntimeError('boom {secret}')\n"
        "except RuntimeError:\n"
        "    structlog.get_logger('t').exception('failed')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert secret not in result.stderr
    assert result.stderr.count(MASK) == 4, result.stderr
