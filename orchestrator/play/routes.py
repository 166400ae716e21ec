"""`/play`: the project list and the editor page, their assets, and the small JSON API they
need beyond the sessions and RPC endpoints (who am I, my projects, the dev login)."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import CurrentCaller
from orchestrator.api.context import database, services
from orchestrator.api.errors import error_responses
from orchestrator.play.projects import (
    Profile,
    ProjectDetail,
    ProjectSummary,
    create_my_project,
    my_project,
    my_projects,
    profile,
    user_for_email,
)
from velocity.errors import NotFound, PermissionDenied
from velocity.generation import template_names
from velocity.settings import is_loopback_host
from velocity.tokens import mint_user_token

STATIC = Path(__file__).with_name("static")
ASSETS = {path.name: path for path in STATIC.iterdir()
          if path.suffix in {".js", ".css", ".html", ".svg"}}
DEV_TOKEN_TTL_SECONDS = 8 * 3600
NO_CACHE = {"Cache-Control": "no-cache"}


class PlayConfig(BaseModel):
    devLogin: bool = Field(description="Whether `POST /play/api/dev-login` is available.")
    templates: list[str] = Field(description="Templates a new project can start from.")


class DevLoginRequest(BaseModel):
    email: str = Field(min_length=3, max_length=320, description="Created when new.")


class DevLoginReply(BaseModel):
    accessToken: str
    tokenType: str = "bearer"
    expiresIn: int
    userId: UUID
    email: str


class NewProject(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    template: str | None = Field(default=None, description="Default `static`.")


def play_router() -> APIRouter:
    router = APIRouter(tags=["play"])
    router.add_api_route("/play", project_list_page, methods=["GET"],
                         response_class=FileResponse, include_in_schema=False)
    router.add_api_route("/play/assets/{name}", asset, methods=["GET"],
                         response_class=FileResponse, include_in_schema=False)
    router.add_api_route("/play/api/config", play_config, methods=["GET"],
                         response_model=PlayConfig)
    router.add_api_route("/play/api/dev-login", dev_login, methods=["POST"],
                         response_model=DevLoginReply,
                         responses=error_responses(403, 404, 422))
    router.add_api_route("/play/api/me", me, methods=["GET"], response_model=Profile,
                         responses=error_responses(401, 404))
    router.add_api_route("/play/api/projects", list_projects, methods=["GET"],
                         response_model=list[ProjectSummary], responses=error_responses(401))
    router.add_api_route("/play/api/projects", create_project, methods=["POST"],
                         response_model=ProjectDetail, status_code=201,
                         responses=error_responses(400, 401, 422))
    router.add_api_route("/play/api/projects/{project_id}", get_project, methods=["GET"],
                         response_model=ProjectDetail, responses=error_responses(401, 404, 422))
    router.add_api_route("/play/{project_id}", editor_page, methods=["GET"],
                         response_class=FileResponse, include_in_schema=False)
    return router


async def project_list_page() -> FileResponse:
    return FileResponse(STATIC / "projects.html", headers=NO_CACHE)


async def editor_page(project_id: UUID) -> FileResponse:
    """The editor; the project is checked by the API calls the page makes once signed in."""
    return FileResponse(STATIC / "editor.html", headers=NO_CACHE)


async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound(f"no asset named {name!r}", known=sorted(ASSETS))
    return FileResponse(ASSETS[name], headers=NO_CACHE)


async def play_config(request: Request) -> PlayConfig:
    """What the sign-in form offers."""
    return PlayConfig(devLogin=services(request).settings.dev_login,
                      templates=template_names())


async def dev_login(body: DevLoginRequest, request: Request) -> DevLoginReply:
    """Sign in as anyone, by email, creating the user: the embedded stack's stand-in for
    Supabase Auth. Off unless VELOCITY_DEV_LOGIN is set (which settings allow only with a
    loopback VELOCITY_PUBLIC_URL), and answered only to clients on this machine."""
    settings = services(request).settings
    if not settings.dev_login:
        raise NotFound("dev login is off; it runs only on the embedded stack "
                       "(VELOCITY_DEV_LOGIN=1)")
    client = request.client.host if request.client else ""
    if not is_loopback_host(client):
        raise PermissionDenied("dev login answers only clients on this machine",
                               client=client)
    user_id = await run_in_threadpool(user_for_email, database(request), body.email)
    token = mint_user_token(user_id, DEV_TOKEN_TTL_SECONDS, settings, email=body.email.strip())
    return DevLoginReply(accessToken=token, expiresIn=DEV_TOKEN_TTL_SECONDS, userId=user_id,
                         email=body.email.strip())


async def me(caller: CurrentCaller, request: Request) -> Profile:
    """The signed-in user (a service key is no one here)."""
    return await run_in_threadpool(profile, database(request), _user(caller))


async def list_projects(caller: CurrentCaller, request: Request) -> list[ProjectSummary]:
    """The signed-in user's projects, most recently changed first."""
    return await run_in_threadpool(my_projects, database(request), _user(caller))


async def create_project(body: NewProject, caller: CurrentCaller,
                         request: Request) -> ProjectDetail:
    """A project owned by the signed-in user; its files are generated from the template
    when its first session starts."""
    return await run_in_threadpool(create_my_project, database(request), _user(caller),
                                   body.name, body.template)


async def get_project(project_id: UUID, caller: CurrentCaller,
                      request: Request) -> ProjectDetail:
    """One of the signed-in user's projects, with its members."""
    return await run_in_threadpool(my_project, database(request), _user(caller), project_id)


def _user(caller: CurrentCaller) -> UUID:
    if caller.user_id is None:
        raise PermissionDenied("the play page acts for a signed-in user, not the service")
    return caller.user_id
