"""The client commands of `ars` (`run`, `jobs`, `show`, `logs`, `cancel`, `webhooks ...`, `schedules ...`):
the API at ARS_URL with the bearer token ARS_TOKEN; Ansible's own output for people, JSON lines for
scripts, exit codes for both."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from service.ansi import strip_ansi
from service.cli.output import say
from service.client import ApiClient, StreamMessage
from service.config import Settings
from service.errors import ClientError

EXIT_OK = 0  # the job succeeded (or the command did what it was asked)
EXIT_ERROR = 1  # the command could not be carried out: API unreachable, request refused, bad configuration
EXIT_FAILED = 2  # Ansible ran and failed: failed or unreachable hosts (as ansible-playbook)
EXIT_CANCELED = 3  # the job was canceled
EXIT_TIMEOUT = 4  # the job ran past its timeout
EXIT_JOB_ERROR = 5  # the service could not carry the run through (see the job's reason)
EXIT_USAGE = 64  # wrong command line
EXIT_DETACHED = 130  # Ctrl-C, then "detach": the job goes on
EXIT_BY_STATUS = {
    "successful": EXIT_OK,
    "failed": EXIT_FAILED,
    "canceled": EXIT_CANCELED,
    "timeout": EXIT_TIMEOUT,
    "error": EXIT_JOB_ERROR,
}


EXIT_CODES_HELP = f"""exit codes (run --follow and logs --follow exit with the job's result):
  {EXIT_OK}    success
  {EXIT_ERROR}    the command could not be carried out (API unreachable, request refused)
  {EXIT_FAILED}    Ansible failed: failed or unreachable hosts
  {EXIT_CANCELED}    the job was canceled
  {EXIT_TIMEOUT}    the job ran past its timeout
  {EXIT_JOB_ERROR}    the service could not carry the run through (see the job's reason)
  {EXIT_USAGE}   wrong command line
  {EXIT_DETACHED}  Ctrl-C, then detach: the job goes on"""


def _load_file(reference: str, what: str) -> Any:
    path = Path(reference.removeprefix("@")).expanduser()
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ClientError(f"{what}: cannot read {path}: {exc}") from None


def _extra_vars(values: Sequence[str]) -> dict[str, Any]:
    """`-e` as ansible-playbook takes it: key=value, a JSON object, or @file (JSON or YAML)."""
    merged: dict[str, Any] = {}
    for value in values:
        if value.startswith("@"):
            loaded = _load_file(value, "-e")
        elif value.lstrip().startswith("{"):
            try:
                loaded = json.loads(value)
            except ValueError as exc:
                raise ClientError(f"-e: not a JSON object: {exc}") from None
        else:
            key, sep, item = value.partition("=")
            if not sep or not key:
                raise ClientError(f"-e: expected key=value, a JSON object or @file, got {value!r}")
            loaded = {key: item}
        if not isinstance(loaded, dict):
            raise ClientError(f"-e {value}: the variables must be an object (key: value)")
        merged.update(loaded)
    return merged


def _split(values: Sequence[str]) -> list[str]:
    return [item for value in values for item in value.split(",") if item]


def _run_request(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"playbook": args.playbook}
    if args.inventory:
        inline = args.inventory.startswith("@")
        body["inventory"] = _load_file(args.inventory, "--inventory") if inline else args.inventory
    if args.extra_vars:
        body["extra_vars"] = _extra_vars(args.extra_vars)
    if args.source_repo:
        body["source"] = {"type": "git", "repo": args.source_repo, "ref": args.ref or "main"}
    elif args.ref:
        raise ClientError("--ref needs --source-repo")
    optional = {
        "limit": args.limit,
        "tags": _split(args.tags),
        "skip_tags": _split(args.skip_tags),
        "check": args.check,
        "diff": args.diff,
        "verbosity": args.verbose,
        "timeout": args.timeout,
        "priority": args.priority,
        "locks": _split(args.lock),
    }
    body.update({key: value for key, value in optional.items() if value})
    if args.exclusive is not None:
        body["exclusive"] = args.exclusive
    return body


class _Output:
    """What the client commands print: Ansible's own output for people, JSON lines for scripts."""

    def __init__(self, as_json: bool, out: TextIO = sys.stdout) -> None:
        self.as_json = as_json
        self.out = out
        self.ansi = out.isatty()

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def json(self, value: Any) -> None:
        self.write(json.dumps(value) + "\n")

    def event(self, message: StreamMessage) -> None:
        if self.as_json:
            self.json(message.data)
            return
        stdout = str(message.data.get("stdout") or "").replace("\r\n", "\n")
        if stdout:
            self.write((stdout if self.ansi else strip_ansi(stdout)) + "\n")

    def end(self, job: dict[str, Any]) -> int:
        if self.as_json:
            self.json(job)
        else:
            say(_summary(job))
        return EXIT_BY_STATUS.get(job["status"], EXIT_JOB_ERROR)


def _summary(job: dict[str, Any]) -> str:
    rc = f", rc {job['rc']}" if job.get("rc") is not None else ""
    reason = f": {job['reason']}" if job.get("reason") else ""
    return f"ars: job {job['id']} {job['status']}{rc}{reason}"


def _ask_cancel(job_id: str) -> bool:
    say(f"\nars: interrupted. Cancel job {job_id} [c], or detach and leave it running [d]? ")
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        return False
    return answer.strip().lower().startswith("c")


def _follow(client: ApiClient, job_id: str, output: _Output) -> int:
    """Print the job's output as it happens; Ctrl-C asks whether to cancel the job or detach."""
    after = 0
    canceling = False
    while True:
        try:
            for message in client.stream(job_id, after=after):
                if message.event == "end":
                    return output.end(message.data)
                output.event(message)
                after = message.seq or after
        except KeyboardInterrupt:
            if canceling or not _ask_cancel(job_id):
                say(f"ars: detached; job {job_id} goes on. Follow it again: ars logs {job_id} --follow")
                return EXIT_DETACHED
            canceling = True
            try:
                client.cancel(job_id)
                say("ars: cancel requested; following the run to its end")
            except ClientError as exc:
                say(f"ars: {exc.detail}")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in rows
    )


def _job_text(job: dict[str, Any]) -> str:
    fields = ["id", "status", "playbook", "rc", "reason", "created_at", "started_at", "finished_at"]
    lines = [f"{name + ':':13}{job[name]}" for name in fields if job.get(name) is not None]
    lines.append(f"{'events:':13}{job['event_count']}")
    if job.get("targets") is not None:
        lines.append(
            f"{'hosts:':13}{', '.join(job['targets'])}" + (" (exclusive)" if job.get("exclusive") else "")
        )
    if job.get("locks"):
        lines.append(f"{'locks:':13}{', '.join(job['locks'])}")
    if waiting := job.get("waiting_for"):
        held = [f"hosts {', '.join(waiting['hosts'])}"] if waiting["hosts"] else []
        held += [f"locks {', '.join(waiting['locks'])}"] if waiting["locks"] else []
        lines.append(f"{'waiting for:':13}{' and '.join(held)}, held by {', '.join(waiting['jobs'])}")
    text = "\n".join(lines) + "\n"
    if job.get("host_stats"):
        keys = ["ok", "changed", "unreachable", "failures", "skipped", "rescued", "ignored"]
        rows = [["HOST", *(key.upper() for key in keys)]]
        rows += [[host, *(str(counts[key]) for key in keys)] for host, counts in job["host_stats"].items()]
        text += "\n" + _table(rows)
    return text


def _labels(values: Sequence[str]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise ClientError(f"--label: expected key=value, got {value!r}")
        labels[key] = item
    return labels


def _webhook_text(webhook: dict[str, Any]) -> str:
    lines = [f"{'id:':13}{webhook['id']}", f"{'url:':13}{webhook['url']}"]
    lines.append(f"{'events:':13}{', '.join(webhook['events'])}")
    if webhook["labels"]:
        lines.append(f"{'labels:':13}{', '.join(f'{k}={v}' for k, v in webhook['labels'].items())}")
    for name in ("description", "created_at", "created_by"):
        if webhook.get(name):
            lines.append(f"{name + ':':13}{webhook[name]}")
    return "\n".join(lines) + "\n"


def _create_webhook(args: argparse.Namespace, client: ApiClient, output: _Output) -> None:
    body: dict[str, Any] = {"url": args.url, "events": args.event or ["job.started", "job.finished"]}
    if args.label:
        body["labels"] = _labels(args.label)
    if args.description:
        body["description"] = args.description
    webhook = client.create_webhook(body)
    if args.json:
        output.json(webhook)
        return
    output.write(_webhook_text(webhook) + f"{'secret:':13}{webhook['secret']}\n")
    say("ars: keep the secret now: it is not shown again (verify each delivery's signature with it)")


def _webhook_rows(webhooks: list[dict[str, Any]]) -> list[list[str]]:
    labels = [",".join(f"{k}={v}" for k, v in hook["labels"].items()) or "-" for hook in webhooks]
    return [["ID", "EVENTS", "LABELS", "URL"]] + [
        [hook["id"], ",".join(hook["events"]), label, hook["url"]]
        for hook, label in zip(webhooks, labels, strict=True)
    ]


def _delivery_rows(deliveries: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["ID", "EVENT", "JOB", "STATUS", "ATTEMPTS", "LAST"]]
    for item in deliveries:
        last = item["attempts"][-1] if item["attempts"] else None
        outcome = "-" if last is None else (last["error"] or str(last["status_code"]))
        rows.append(
            [item["id"], item["event"], item["job_id"], item["status"], str(len(item["attempts"])), outcome]
        )
    return rows


def _webhooks_command(args: argparse.Namespace, client: ApiClient, output: _Output) -> None:
    command = args.webhooks_command
    if command == "create":
        _create_webhook(args, client, output)
    elif command == "delete":
        client.delete_webhook(args.id)
        if not args.json:
            say(f"ars: webhook {args.id} deleted, with its deliveries")
    elif command == "show":
        webhook = client.webhook(args.id)
        if args.json:
            output.json(webhook)
        else:
            output.write(_webhook_text(webhook))
    else:
        found = client.webhooks() if command == "list" else client.deliveries(args.id, args.limit)
        if args.json:
            output.json(found)
        elif found:
            output.write(_table(_webhook_rows(found) if command == "list" else _delivery_rows(found)))


def _schedule_text(schedule: dict[str, Any]) -> str:
    lines = [f"{name + ':':13}{_text(schedule[name])}" for name in ("id", "name", "cron", "timezone")]
    lines.append(f"{'overlap:':13}{schedule['overlap']}")
    lines.append(f"{'enabled:':13}{'yes' if schedule['enabled'] else 'no'}")
    lines.append(f"{'playbook:':13}{schedule['job']['playbook']}")
    lines += [f"{'next runs:' if n == 0 else '':13}{run}" for n, run in enumerate(schedule["next_runs"])]
    text = "\n".join(lines) + "\n"
    if schedule["recent_fires"]:
        text += "\n" + _table(_fire_rows(schedule["recent_fires"]))
    return text


def _fire_rows(fires: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["FIRE TIME", "OUTCOME", "JOB", "DETAIL"]]
    for fire in fires:
        outcome = fire["outcome"] + (f" ({fire['count']})" if fire["count"] > 1 else "")
        rows.append([fire["fire_at"], outcome, _text(fire["job_id"]) or "-", _text(fire["detail"])])
    return rows


def _schedules_command(args: argparse.Namespace, client: ApiClient, output: _Output) -> None:
    command = args.schedules_command
    if command == "list":
        found = client.schedules()
        if args.json:
            output.json(found)
        elif found:
            rows = [["ID", "NAME", "CRON", "TIMEZONE", "ENABLED", "NEXT RUN"]]
            rows += [
                [
                    s["id"],
                    s["name"],
                    s["cron"],
                    s["timezone"],
                    "yes" if s["enabled"] else "no",
                    (s["next_runs"] or ["-"])[0],
                ]
                for s in found
            ]
            output.write(_table(rows))
        return
    if command == "fires":
        found = client.schedule_fires(args.id, args.limit)
        if args.json:
            output.json(found)
        elif found:
            output.write(_table(_fire_rows(found)))
        return
    if command == "delete":
        client.delete_schedule(args.id)
        if not args.json:
            say(f"ars: schedule {args.id} deleted; its jobs stay")
        return
    if command == "create":
        body = {
            "name": args.name,
            "cron": args.cron,
            "timezone": args.timezone,
            "overlap": args.overlap,
            "enabled": not args.disabled,
            "job": _run_request(args),
        }
        schedule = client.create_schedule(body)
    elif command in ("enable", "disable"):
        schedule = client.change_schedule(args.id, {"enabled": command == "enable"})
    else:
        schedule = client.schedule(args.id)
    if args.json:
        output.json(schedule)
    else:
        output.write(_schedule_text(schedule))


def _list_jobs(args: argparse.Namespace, client: ApiClient, output: _Output) -> None:
    params = {"status": args.status, "playbook": args.playbook, "limit": args.limit}
    jobs = client.jobs({key: value for key, value in params.items() if value})
    if args.json:
        output.json(jobs)
    elif jobs:
        rows = [["ID", "STATUS", "CREATED", "RC", "PLAYBOOK"]]
        rows += [
            [job["id"], job["status"], job["created_at"][:19], _text(job["rc"]), job["playbook"]]
            for job in jobs
        ]
        output.write(_table(rows))


def client_command(args: argparse.Namespace, settings: Settings) -> int:
    output = _Output(args.json)
    client = ApiClient(settings.ars_url, settings.ars_token)
    try:
        if args.command == "run":
            job = client.submit(_run_request(args))
            if args.follow:
                if not args.json:
                    say(f"ars: job {job['id']} queued")
                return _follow(client, job["id"], output)
            if args.json:
                output.json(job)
            else:
                output.write(job["id"] + "\n")
                say(f"ars: job {job['id']} queued; follow it with: ars logs {job['id']} --follow")
        elif args.command == "jobs":
            _list_jobs(args, client, output)
        elif args.command == "show":
            job = client.job(args.id)
            if args.json:
                output.json(job)
            else:
                output.write(_job_text(job))
        elif args.command == "webhooks":
            _webhooks_command(args, client, output)
        elif args.command == "schedules":
            _schedules_command(args, client, output)
        elif args.command == "cancel":
            job = client.cancel(args.id)
            if args.json:
                output.json(job)
            else:
                say(f"ars: job {job['id']} {job['status']}: cancel requested")
        elif args.follow:
            return _follow(client, args.id, output)
        else:
            output.write(client.stdout(args.id, ansi=output.ansi))
        return EXIT_OK
    finally:
        client.close()


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    """What `run` asks for, as `_run_request` reads it (also the run of `schedules create`)."""
    run.add_argument("playbook", help="playbook path inside the source (the bundled playbooks by default)")
    run.add_argument("-i", "--inventory", help="inventory path inside the source, or @file for an inline one")
    run.add_argument(
        "-e", "--extra-vars", action="append", default=[], help="key=value, a JSON object or @file.json/yml"
    )
    run.add_argument("-l", "--limit", help="host pattern")
    run.add_argument("-t", "--tags", action="append", default=[], help="comma separated, repeatable")
    run.add_argument("--skip-tags", action="append", default=[], help="comma separated, repeatable")
    run.add_argument("-C", "--check", action="store_true", help="check mode: change nothing")
    run.add_argument("-D", "--diff", action="store_true", help="show diffs")
    run.add_argument("-v", "--verbose", action="count", default=0, help="more Ansible output (up to -vvvv)")
    run.add_argument("--timeout", type=int, help="seconds the run may take")
    run.add_argument("--priority", choices=["high", "default", "low"])
    run.add_argument(
        "-x",
        "--exclusive",
        action=argparse.BooleanOptionalAction,
        help="lease the target hosts exclusively for the whole run (default: EXCLUSIVE_DEFAULT)",
    )
    run.add_argument(
        "--lock",
        action="append",
        default=[],
        help="a named lock held for the whole run; comma separated, repeatable",
    )
    run.add_argument("--source-repo", metavar="URL", help="a Git repository on a configured provider")
    run.add_argument("--ref", help="branch, tag or commit of --source-repo (default: main)")


def add_parsers(commands: Any) -> None:
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON for scripts")
    run = commands.add_parser("run", parents=[as_json], help="run a playbook through the API")
    _add_run_arguments(run)
    run.add_argument(
        "-f", "--follow", action="store_true", help="print the output live, exit with the result"
    )
    jobs = commands.add_parser("jobs", parents=[as_json], help="list jobs, newest first")
    jobs.add_argument("--status", action="append", help="repeatable")
    jobs.add_argument("--playbook")
    jobs.add_argument("--limit", type=int, default=20)
    for name, text in [
        ("show", "a job and its per-host results"),
        ("cancel", "cancel a queued or running job"),
    ]:
        commands.add_parser(name, parents=[as_json], help=text).add_argument("id")
    webhooks = commands.add_parser("webhooks", help="webhook subscriptions (an admin token)")
    hooks = webhooks.add_subparsers(dest="webhooks_command", required=True)
    create = hooks.add_parser("create", parents=[as_json], help="subscribe a URL; prints its secret, once")
    create.add_argument("url", help="http(s) URL the deliveries are posted to")
    create.add_argument(
        "--event",
        action="append",
        choices=["job.started", "job.finished"],
        help="repeatable (default: both)",
    )
    create.add_argument("--label", action="append", default=[], help="key=value a job must carry; repeatable")
    create.add_argument("--description")
    hooks.add_parser("list", parents=[as_json], help="every subscription")
    hooks.add_parser("show", parents=[as_json], help="one subscription").add_argument("id")
    hooks.add_parser("delete", parents=[as_json], help="a subscription and its deliveries").add_argument("id")
    deliveries = hooks.add_parser(
        "deliveries", parents=[as_json], help="a subscription's deliveries, newest first, with attempts"
    )
    deliveries.add_argument("id")
    deliveries.add_argument("--limit", type=int, default=20)
    schedules = commands.add_parser("schedules", help="runs started by cron (a run token)")
    timed = schedules.add_subparsers(dest="schedules_command", required=True)
    create = timed.add_parser("create", parents=[as_json], help="a schedule of a run; prints its next runs")
    create.add_argument("name", help="unique; letters, digits, spaces and _.:@-")
    create.add_argument("--cron", required=True, help="5 fields, e.g. '30 2 * * *'")
    create.add_argument("--timezone", "--tz", default="UTC", help="IANA name, e.g. Europe/Berlin")
    create.add_argument(
        "--overlap",
        choices=["skip", "queue"],
        default="skip",
        help="while the previous run is queued or running: skip the fire time (default) or run anyway",
    )
    create.add_argument("--disabled", action="store_true", help="create it without firing yet")
    _add_run_arguments(create)
    timed.add_parser("list", parents=[as_json], help="every schedule, with its next run")
    for name, text in [
        ("show", "a schedule, its next runs and its latest fires"),
        ("enable", "fire from now on"),
        ("disable", "stop firing at once"),
        ("delete", "delete a schedule (its jobs stay)"),
    ]:
        timed.add_parser(name, parents=[as_json], help=text).add_argument("id")
    fires = timed.add_parser("fires", parents=[as_json], help="what became of each fire time, newest first")
    fires.add_argument("id")
    fires.add_argument("--limit", type=int, default=20)
    logs = commands.add_parser("logs", parents=[as_json], help="a job's output (--follow: live)")
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true", help="follow the output live until the job ends")
