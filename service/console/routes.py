"""The console's pages. Each is a shell that the console's script fills from /api/v1, as any client would;
the run form is the exception, handled here so that YAML is parsed by the server, never by the browser, and
so is the list of schedules, which changes at most once a minute and needs no script."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from service.api.auth import ANONYMOUS, Authenticator, Principal, check_origin
from service.api.deps import UUID_PATTERN, LifecycleDep, SessionDep, SettingsDep, TargetsDep, ViewsDep
from service.console.forms import job_body, read_form
from service.console.sessions import COOKIE
from service.errors import InvalidRequest, NotFound
from service.jobs import service as jobs
from service.jobs.repository import JobRepository
from service.jobs.schemas import JobRequest
from service.models import Job, JobStatus
from service.schedules import service as schedules
from service.sources.bundled import list_playbooks

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
static_files = StaticFiles(directory=HERE / "static")
router = APIRouter(include_in_schema=False)

# Scripts and styles come from /static only: nothing a request or a playbook printed can run as code.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_JOB_ID = re.compile(UUID_PATTERN)
# Where a login may send the browser next: a path of this site (never `//host`, which leaves it).
_NEXT = re.compile(r"^/(?![/\\])[A-Za-z0-9/_.~%?=&+-]{0,500}\Z")


def _authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


def _visitor(request: Request) -> Principal | None:
    authenticator = _authenticator(request)
    if authenticator.disabled:
        return ANONYMOUS
    cookie = request.cookies.get(COOKIE)
    return authenticator.session(cookie) if cookie else None


def _page(
    request: Request, name: str, principal: Principal | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {
            "principal": principal,
            "can_run": principal is not None and principal.may("run"),
            "auth_on": not _authenticator(request).disabled,
            **context,
        },
        status_code=status_code,
        headers=_HEADERS,
    )


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303, headers=_HEADERS)


@router.get("/", response_class=HTMLResponse)
async def job_list(request: Request) -> Response:
    principal = _visitor(request)
    if principal is None:
        return _to_login(request)
    return _page(request, "jobs.html", principal, statuses=[status.value for status in JobStatus])


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: str, views: ViewsDep) -> Response:
    principal = _visitor(request)
    if principal is None:
        return _to_login(request)
    if not _JOB_ID.fullmatch(job_id):
        return _page(request, "not_found.html", principal, status_code=404)
    try:
        job = json.loads((await views.get(job_id)).body)
    except NotFound:
        return _page(request, "not_found.html", principal, status_code=404)
    return _page(request, "job.html", principal, job=job)


@router.get("/schedules", response_class=HTMLResponse)
async def schedule_list(request: Request, session: SessionDep) -> Response:
    principal = _visitor(request)
    if principal is None:
        return _to_login(request)
    found = await schedules.list_all(session)
    runs = [fire.job_id for schedule in found for fire in schedule.recent_fires if fire.job_id]
    statuses = await JobRepository(session).statuses(runs)
    return _page(request, "schedules.html", principal, schedules=found, statuses=statuses)


@router.get("/run", response_class=HTMLResponse)
async def run_form(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    from_job: Annotated[str | None, Query(alias="from", max_length=36)] = None,
) -> Response:
    principal = _visitor(request)
    if principal is None:
        return _to_login(request)
    if not principal.may("run"):
        return _page(request, "forbidden.html", principal, status_code=403)
    values: dict[str, str] = {"priority": "default"}
    if settings.exclusive_default:
        values["exclusive"] = "on"
    if from_job is not None and _JOB_ID.fullmatch(from_job):
        with contextlib.suppress(NotFound):
            values = _form_values(await jobs.get(session, from_job))
    return _run_page(request, principal, settings.playbooks_dir, values)


@router.post("/run", response_class=HTMLResponse)
async def run_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    lifecycle: LifecycleDep,
    targets: TargetsDep,
) -> Response:
    principal = _visitor(request)
    if principal is None:
        return _to_login(request)
    check_origin(request, required=not _authenticator(request).disabled)
    if not principal.may("run"):
        return _page(request, "forbidden.html", principal, status_code=403)
    form = read_form(await request.body())
    try:
        body = JobRequest.model_validate(job_body(form, settings.max_json_depth))
        job, _ = await jobs.submit(session, lifecycle, settings, body, None, principal.name, targets=targets)
    except InvalidRequest as exc:
        return _run_page(request, principal, settings.playbooks_dir, form, [exc.detail], status_code=422)
    except ValidationError as exc:
        errors = [_describe(error) for error in exc.errors(include_url=False)]
        return _run_page(request, principal, settings.playbooks_dir, form, errors, status_code=422)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303, headers=_HEADERS)


def _describe(error: Any) -> str:
    field = ".".join(str(part)[:64] for part in error.get("loc", ())) or "form"
    return f"{field}: {error.get('msg', 'invalid')}"


def _run_page(
    request: Request,
    principal: Principal,
    playbooks_dir: Path,
    values: dict[str, str],
    errors: list[str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    # Each message goes next to the field it names ("extra_vars.x: …" → extra_vars), the rest above the form.
    by_field: dict[str, list[str]] = {}
    for message in errors or []:
        field = re.split(r"[.:\[ ]", message, maxsplit=1)[0]
        by_field.setdefault(field if field in _FORM_FIELDS else "", []).append(message)
    return _page(
        request,
        "run.html",
        principal,
        status_code=status_code,
        playbooks=list_playbooks(playbooks_dir),
        values=values,
        errors=by_field,
    )


_FORM_FIELDS = {"playbook", "inventory", "extra_vars", "limit", "tags", "priority", "exclusive", "locks"}


def _form_values(job: Job) -> dict[str, str]:
    values = {
        "playbook": job.playbook,
        "inventory": job.inventory if isinstance(job.inventory, str) else "",
        "extra_vars": json.dumps(job.extra_vars, indent=2) if job.extra_vars else "",
        "limit": job.limit or "",
        "tags": ",".join(job.tags),
        "priority": job.priority,
        "locks": ",".join(job.locks or ()),
    }
    values.update({flag: "on" for flag in ("check", "diff", "exclusive") if getattr(job, flag)})
    return values


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next_path: Annotated[str, Query(alias="next")] = "/") -> Response:
    if _visitor(request) is not None:
        return RedirectResponse(_safe_next(next_path), status_code=303, headers=_HEADERS)
    return _page(request, "login.html", None, next_path=_safe_next(next_path))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    # Logging a victim's browser in as the attacker is an attack too: only the console's own form counts.
    check_origin(request, required=True)
    form = read_form(await request.body(), ("token", "next"))
    token, next_path = form.get("token", ""), form.get("next", "/")
    authenticator = _authenticator(request)
    if authenticator.disabled:
        return RedirectResponse("/", status_code=303, headers=_HEADERS)
    cookie = authenticator.login(token)
    if cookie is None:
        return _page(
            request, "login.html", None, status_code=401, next_path=_safe_next(next_path), failed=True
        )
    response = RedirectResponse(_safe_next(next_path), status_code=303, headers=_HEADERS)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=authenticator.sessions.max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_over_https(request),
    )
    return response


def _over_https(request: Request) -> bool:
    # Behind a proxy that terminates TLS the request arrives as http; the browser's Origin still says https.
    return request.url.scheme == "https" or request.headers.get("origin", "").startswith("https://")


@router.post("/logout")
async def logout(request: Request) -> Response:
    check_origin(request, required=True)
    response = RedirectResponse("/login", status_code=303, headers=_HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=_over_https(request))
    return response


def _safe_next(path: str) -> str:
    return path if _NEXT.match(path) else "/"
