"""`python -m service.cli`: the same as `ars`."""

import sys

from service.cli import main

sys.exit(main())
