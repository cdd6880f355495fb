"""`ars`: the service's command line.

`ars dev` runs everything on one machine (cli/dev.py); `ars worker` runs a worker; `ars migrate` upgrades the
database; `ars token new` makes a token (cli/tokens.py); the client commands talk to the API (cli/client.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from service.api.auth import SCOPES
from service.cli import client
from service.cli.client import EXIT_CODES_HELP, EXIT_ERROR, EXIT_OK, EXIT_USAGE
from service.cli.dev import dev
from service.cli.output import say
from service.cli.tokens import token_new_command
from service.config import get_settings
from service.db import migrate
from service.errors import ClientError, ConfigurationError
from service.runner.environment import exec_clean, take_handoff


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="ars",
        description="ansible-runner-service. Client commands use ARS_URL and ARS_TOKEN.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    dev_parser = commands.add_parser(
        "dev", help="run the API, a worker and (if needed) Redis on this machine"
    )
    dev_parser.add_argument("--port", type=int, default=8000)
    commands.add_parser("migrate", help="upgrade the database to the latest schema (alembic upgrade head)")
    commands.add_parser("worker", help="run a worker (arq, woken by each submit); SIGTERM stops it")
    client.add_parsers(commands)
    token_parser = commands.add_parser("token", help="API tokens")
    token_commands = token_parser.add_subparsers(dest="token_command", required=True)
    token_new = token_commands.add_parser(
        "new", help="print a new token and the API_TOKENS entry (name:scopes:sha256) for the Secret"
    )
    token_new.add_argument("name", help="who uses the token; recorded on every job it submits")
    token_new.add_argument(
        "--scope", action="append", choices=SCOPES, required=True, help="read, run or admin; repeatable"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "dev":
            return dev(args.port)
        if args.command == "token":
            return token_new_command(args.name, args.scope)
        if args.command == "migrate":
            migrate(get_settings())
            return EXIT_OK
        if args.command == "worker":
            if not take_handoff():
                # Runs can read the environment the worker was started with: start it without secrets.
                exec_clean(get_settings(), ["-m", "service.cli", "worker"])
            # Imported here: the worker module reads its settings at import, which client commands never need.
            from service.worker import run_worker

            run_worker()
            return EXIT_OK
        return client.client_command(args, get_settings())
    except (ConfigurationError, ClientError) as exc:
        say(f"ars: {exc.detail}")
        return EXIT_ERROR
