"""A stand-in for the EODH API, for `eodh-proxy demo` and for the tests.

It checks bearer tokens per workspace the way the platform's front proxy does:
a request on a workspace path with no `Authorization` gets 401, one with another
workspace's token (or an unknown one) gets 403. Its documents carry absolute
links on its own origin, as the platform's do. It records every request it
receives, and notes as a violation any request whose token belongs to a
workspace other than the one the path routes to, read strictly or with ";"
parameters stripped from each segment.

It serves a small workflow runner (OGC API - Processes: processes, execution,
paged jobs, results), a STAC catalogue per workspace (`proxy.standin_stac`),
commercial-data quotes and orders (no workspace in the path: the workspace is
the token's) and a public STAC catalogue root.
"""

from __future__ import annotations

import hmac
import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from proxy import standin_stac

USER_CATALOGS = "/api/catalogue/stac/catalogs/user/catalogs"
COMMERCIAL_CATALOGS = "/api/catalogue/stac/catalogs/commercial/catalogs"
WORKSPACE_FAMILIES = (
    USER_CATALOGS,
    "/api/workspaces",
    "/api/catalogue/manage/catalogs/user-datasets",
    "/ades",
    "/workspaces",
)


@dataclass
class Received:
    """One request as the stand-in saw it."""

    method: str
    raw_path: str
    headers: dict[str, list[str]]
    workspace: str | None
    token_workspace: str | None
    host: str = "api"
    """The stand-in application that received it: "api" or "files"."""


@dataclass
class StandIn:
    """State of a running stand-in: its tokens, origin and what it received."""

    tokens: dict[str, str]
    origin: str = ""
    received: list[Received] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    job_workspaces: dict[str, str] = field(default_factory=dict)
    public_workspaces: set[str] = field(default_factory=set)
    """Workspaces whose paths accept any valid token, as for a workflow published as public."""
    files_template: str = ""
    """The files host URL template, `http://HOST:PORT/{workspace}`, or "" when none runs."""
    files: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    """Files on the files host by (workspace, path), with their media types."""

    def files_base(self, workspace: str) -> str:
        """Return a workspace's files host URL, or "" when no files host runs."""
        return self.files_template.replace("{workspace}", workspace)

    def workspace_of_token(self, token: str) -> str | None:
        for workspace, expected in self.tokens.items():
            if hmac.compare_digest(token.encode(), expected.encode()):
                return workspace
        return None


STANDIN_KEY = web.AppKey("standin", StandIn)


def strict_workspace(raw_path: str) -> str | None:
    """Return the workspace a strict server routes `raw_path` to (decode once, normalise)."""
    return _workspace_of(normalised_segments(raw_path))


def params_stripped_workspace(raw_path: str) -> str | None:
    """Return the workspace `raw_path` routes to on a server that strips ";" parameters.

    Tomcat and Jetty cut each segment at its first ";", so they read "..;x" as "..".
    """
    return _workspace_of(normalised_segments(raw_path, strip_params=True))


def normalised_segments(raw_path: str, *, strip_params: bool = False) -> list[str]:
    """Split `raw_path` as a server routes it: decode once, merge empty segments, resolve dots."""
    segments: list[str] = []
    for segment in unquote(raw_path.partition("?")[0]).split("/"):
        if strip_params:
            segment = segment.partition(";")[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return segments


def _workspace_of(segments: list[str]) -> str | None:
    for family in sorted(WORKSPACE_FAMILIES, key=len, reverse=True):
        parts = family.strip("/").split("/")
        if len(segments) > len(parts) and segments[: len(parts)] == parts:
            return segments[len(parts)]
    return None


def record_request(
    standin: StandIn, request: web.Request, workspace: str | None, host: str = "api"
) -> str | None:
    """Append `request` to `standin.received`; return the workspace its bearer token belongs to."""
    authorization = request.headers.getall("Authorization", [])
    token_workspace = None
    if len(authorization) == 1 and authorization[0].startswith("Bearer "):
        token_workspace = standin.workspace_of_token(authorization[0][len("Bearer ") :])
    standin.received.append(
        Received(
            method=request.method,
            raw_path=request.raw_path,
            headers={name: request.headers.getall(name) for name in request.headers},
            workspace=workspace,
            token_workspace=token_workspace,
            host=host,
        )
    )
    return token_workspace


@web.middleware
async def _check_token(request: web.Request, handler: Any) -> web.StreamResponse:
    standin = request.app[STANDIN_KEY]
    workspace = strict_workspace(request.raw_path)
    token_workspace = record_request(standin, request, workspace)
    authorization = request.headers.getall("Authorization", [])
    # A server that strips ";" parameters may route the path elsewhere: count that reading too.
    for routed in (workspace, params_stripped_workspace(request.raw_path)):
        crossed = token_workspace is not None and routed is not None and token_workspace != routed
        if crossed and routed not in standin.public_workspaces:
            standin.violations.append(
                f"{request.method} {request.raw_path}: token of {token_workspace} "
                f"on a path routed to {routed}"
            )
            break
    if len(authorization) > 1:
        standin.violations.append(f"{request.method} {request.raw_path}: two Authorization headers")

    if workspace is not None:
        if not authorization:
            return web.Response(status=401, text="authorization header missing")
        accepted = token_workspace == workspace or (
            token_workspace is not None and workspace in standin.public_workspaces
        )
        if not accepted:
            return web.json_response({"detail": "Access denied"}, status=403)
    response: web.StreamResponse = await handler(request)
    return response


def _files_base(request: web.Request) -> str:
    return request.app[STANDIN_KEY].files_base(request.match_info["ws"])


def _base(request: web.Request) -> str:
    standin = request.app[STANDIN_KEY]
    return f"{standin.origin}{USER_CATALOGS}/{request.match_info['ws']}"


async def _processes(request: web.Request) -> web.Response:
    base = _base(request)
    processes = [
        {
            "id": name,
            "version": "1.0.0",
            "jobControlOptions": ["async-execute"],
            "outputTransmission": ["reference"],
            "links": [{"rel": "self", "href": f"{base}/processes/{name}"}],
        }
        for name in ("echo", "ndvi")
    ]
    return web.json_response(
        {"processes": processes, "links": [{"rel": "self", "href": f"{base}/processes"}]}
    )


async def _process(request: web.Request) -> web.Response:
    base = _base(request)
    name = request.match_info["process"]
    if name not in ("echo", "ndvi"):
        return web.json_response(
            {"title": "NoSuchProcess", "type": "no-such-process", "detail": f"{name} not found"},
            status=404,
        )
    return web.json_response(
        {
            "id": name,
            "version": "1.0.0",
            "inputs": {"workspace": {"schema": {"type": "string"}}},
            "links": [
                {"rel": "self", "href": f"{base}/processes/{name}"},
                {
                    "rel": "http://www.opengis.net/def/rel/ogc/1.0/execute",
                    "href": f"{base}/processes/{name}/execution",
                },
            ],
        }
    )


async def _execute(request: web.Request) -> web.Response:
    standin = request.app[STANDIN_KEY]
    base = _base(request)
    inputs = (await request.json()).get("inputs", {})
    job_id = str(uuid.uuid4())
    job = {
        "jobID": job_id,
        "processID": request.match_info["process"],
        "status": "running",
        "inputs": inputs,
        "links": [
            {"rel": "self", "href": f"{base}/jobs/{job_id}"},
            {"rel": "monitor", "href": f"{base}/jobs/{job_id}"},
        ],
    }
    standin.jobs[job_id] = job
    standin.job_workspaces[job_id] = request.match_info["ws"]
    return web.json_response(
        job,
        status=201,
        headers={"Location": f"{base}/jobs/{job_id}", "Preference-Applied": "respond-async"},
    )


async def _job(request: web.Request) -> web.Response:
    standin = request.app[STANDIN_KEY]
    base = _base(request)
    job = standin.jobs.get(request.match_info["job"])
    if job is None:
        return web.json_response({"title": "NoSuchJob", "type": "no-such-job"}, status=404)
    # A job finishes the second time it is polled, so clients see it change.
    if job["status"] == "running":
        job["status"] = "_finishing"
        shown = dict(job, status="running")
    else:
        job["status"] = "successful"
        _store_results(standin, request.match_info["ws"], job["jobID"], base)
        results = f"{base}/jobs/{job['jobID']}/results"
        job["links"] = [
            {"rel": "self", "href": f"{base}/jobs/{job['jobID']}"},
            {"rel": "monitor", "href": f"{base}/jobs/{job['jobID']}"},
            {"rel": "http://www.opengis.net/def/rel/ogc/1.0/results", "href": results},
        ]
        shown = job
    return web.json_response(shown)


JOBS_PAGE = 2


async def _jobs(request: web.Request) -> web.Response:
    """List jobs a page at a time (`limit`, `skip`), with an absolute `next` link."""
    standin = request.app[STANDIN_KEY]
    base = _base(request)
    try:
        limit = min(max(int(request.query.getone("limit", JOBS_PAGE)), 1), JOBS_PAGE)
        skip = max(int(request.query.getone("skip", 0)), 0)
    except ValueError:
        raise web.HTTPBadRequest(text="limit and skip must be integers") from None
    everything = [
        {
            "jobID": job_id,
            "processID": job["processID"],
            "status": "running" if job["status"] == "_finishing" else job["status"],
            "links": [{"rel": "monitor", "href": f"{base}/jobs/{job_id}"}],
        }
        for job_id, job in standin.jobs.items()
        if standin.job_workspaces.get(job_id) == request.match_info["ws"]
    ]
    links = [{"rel": "self", "href": f"{base}/jobs"}]
    if skip + limit < len(everything):
        links.append({"rel": "next", "href": f"{base}/jobs?limit={limit}&skip={skip + limit}"})
    return web.json_response(
        {"jobs": everything[skip : skip + limit], "links": links, "numberTotal": len(everything)}
    )


RESULTS_NOT_READY = "http://www.opengis.net/def/rel/ogc/1.0/exception/result-not-ready"


def _result_path(job_id: str, name: str) -> str:
    return f"files/workspaces-eodhp-staging/processing-results/{job_id}/{name}"


def _store_results(standin: StandIn, workspace: str, job_id: str, base: str) -> None:
    """Write a finished job's result item and its data file to the workspace's files host."""
    files = standin.files_base(workspace)
    if not files:
        return
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"result-{job_id}",
        "geometry": None,
        "properties": {"datetime": "2024-01-01T00:00:00Z"},
        "links": [
            {"rel": "self", "href": f"{files}/{_result_path(job_id, 'result.json')}"},
            {"rel": "collection", "href": f"{base}/jobs/{job_id}/results"},
        ],
        "assets": {
            "data": {"href": f"{files}/{_result_path(job_id, 'result.txt')}", "type": "text/plain"}
        },
    }
    standin.files[(workspace, _result_path(job_id, "result.json"))] = (
        json.dumps(item).encode(),
        "application/geo+json",
    )
    standin.files[(workspace, _result_path(job_id, "result.txt"))] = (b"echo: done\n", "text/plain")


async def _results(request: web.Request) -> web.Response:
    """A finished job's results: a STAC collection whose items live on the files host."""
    standin = request.app[STANDIN_KEY]
    base = _base(request)
    job_id = request.match_info["job"]
    job = standin.jobs.get(job_id)
    if job is None or job["status"] != "successful":
        return web.json_response(
            {"type": RESULTS_NOT_READY, "title": "Results not ready"}, status=404
        )
    links = [{"rel": "self", "href": f"{base}/jobs/{job_id}/results"}]
    files = standin.files_base(request.match_info["ws"])
    if files:
        links.append({"rel": "item", "href": f"{files}/{_result_path(job_id, 'result.json')}",
                      "type": "application/geo+json"})
    return web.json_response(
        {
            "type": "Collection",
            "stac_version": "1.0.0",
            "id": f"results-{job_id}",
            "description": f"Results of job {job_id}",
            "license": "proprietary",
            "extent": {
                "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
                "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]},
            },
            "links": links,
        }
    )


def _token_workspace(request: web.Request) -> str | None:
    standin = request.app[STANDIN_KEY]
    authorization = request.headers.getall("Authorization", [])
    if len(authorization) != 1 or not authorization[0].startswith("Bearer "):
        return None
    return standin.workspace_of_token(authorization[0][len("Bearer ") :])


async def _commercial(request: web.Request) -> web.Response:
    """Quote or order a commercial item for the workspace the token belongs to."""
    standin = request.app[STANDIN_KEY]
    workspace = _token_workspace(request)
    if workspace is None:
        return web.Response(status=401, text="authorization header missing")
    item = request.match_info
    item_url = (
        f"{standin.origin}{COMMERCIAL_CATALOGS}/{item['catalog']}/collections/"
        f"{item['collection']}/items/{item['item']}"
    )
    if item["action"] == "quote":
        return web.json_response(
            {
                "value": 42.5,
                "units": "GBP",
                "workspace": workspace,
                "links": [
                    {"rel": "item", "href": item_url},
                    {"rel": "order", "href": f"{item_url}/order", "method": "POST"},
                ],
            }
        )
    ordered = (
        f"{standin.origin}{USER_CATALOGS}/{workspace}/catalogs/commercial-data/catalogs/"
        f"{item['catalog']}/collections/{item['collection']}/items/{item['item']}"
    )
    return web.json_response(
        {"status": "ordered", "workspace": workspace, "links": [{"rel": "ordered", "href": ordered}]},
        status=201,
        headers={"Location": ordered},
    )


async def _public_root(request: web.Request) -> web.Response:
    standin = request.app[STANDIN_KEY]
    return web.json_response(
        {
            "type": "Catalog",
            "id": "eodh",
            "description": "Public catalogue (stand-in)",
            "links": [{"rel": "self", "href": f"{standin.origin}/api/catalogue/stac/"}],
        }
    )


def build_app(tokens: dict[str, str]) -> web.Application:
    """Return the stand-in application; set `app[STANDIN_KEY].origin` once it listens."""
    app = web.Application(middlewares=[_check_token])
    app[STANDIN_KEY] = StandIn(tokens=dict(tokens))
    user = USER_CATALOGS + "/{ws}"
    app.router.add_get(user + "/processes", _processes)
    app.router.add_get(user + "/processes/{process}", _process)
    app.router.add_post(user + "/processes/{process}/execution", _execute)
    app.router.add_get(user + "/jobs", _jobs)
    app.router.add_get(user + "/jobs/{job}", _job)
    app.router.add_get(user + "/jobs/{job}/results", _results)
    app.router.add_get("/api/catalogue/stac/", _public_root)
    app.router.add_post(
        COMMERCIAL_CATALOGS
        + "/{catalog}/collections/{collection}/items/{item}/{action:quote|order}",
        _commercial,
    )
    standin_stac.add_routes(app, user, _base, _files_base)
    return app


def dump(standin: StandIn) -> str:
    """Describe what the stand-in received, for test failure messages; tokens left out."""
    return json.dumps([(r.method, r.raw_path, r.workspace, r.token_workspace) for r in standin.received])
