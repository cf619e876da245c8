"""The stand-in's workspace files host, served as a second application on its own origin.

The platform gives each workspace its own files host (`<workspace>.<domain>/files/...`).
The stand-in serves every workspace from one origin with the workspace as the
first path segment, which is the files host template `http://HOST:PORT/{workspace}`.
Like the API stand-in, it checks tokens per workspace (401 without one, 403 with
another workspace's), records every request, and notes a violation when a
token reaches another workspace's files. It shares its state with the API stand-in.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.standin import STANDIN_KEY, StandIn, normalised_segments, record_request


def files_workspace(raw_path: str, *, strip_params: bool = False) -> str | None:
    """Return the workspace a server reads from a files path: the first normalised segment.

    With `strip_params`, each segment is cut at its first ";" first, as Tomcat and Jetty do.
    """
    segments = normalised_segments(raw_path, strip_params=strip_params)
    return segments[0] if segments else None


@web.middleware
async def _check_files_token(request: web.Request, handler: Any) -> web.StreamResponse:
    standin = request.app[STANDIN_KEY]
    workspace = files_workspace(request.raw_path)
    token_workspace = record_request(standin, request, workspace, host="files")
    authorization = request.headers.getall("Authorization", [])
    # A server that strips ";" parameters may read another workspace: count that reading too.
    for routed in (workspace, files_workspace(request.raw_path, strip_params=True)):
        if token_workspace is not None and token_workspace != routed:
            standin.violations.append(
                f"files {request.method} {request.raw_path}: token of {token_workspace} "
                f"on the files of {routed}"
            )
            break
    if not authorization:
        return web.Response(status=401, text="authorization header missing")
    if token_workspace is None or token_workspace != workspace:
        return web.json_response({"detail": "Access denied"}, status=403)
    response: web.StreamResponse = await handler(request)
    return response


async def _file(request: web.Request) -> web.StreamResponse:
    standin = request.app[STANDIN_KEY]
    key = (request.match_info["ws"], "files/" + request.match_info["path"])
    if request.method == "PUT":
        body = b"".join([chunk async for chunk in request.content.iter_any()])
        content_type = request.headers.get("Content-Type", "application/octet-stream")
        standin.files[key] = (body, content_type)
        location = f"{standin.files_base(key[0])}/{key[1]}"
        return web.Response(status=201, headers={"Location": location})
    if key not in standin.files:
        return web.json_response({"detail": f"{key[1]} not found"}, status=404)
    if request.method == "DELETE":
        del standin.files[key]
        return web.Response(status=204)
    body, content_type = standin.files[key]
    return web.Response(body=body, headers={"Content-Type": content_type})


def build_files_app(standin: StandIn) -> web.Application:
    """Return the files host application. It shares `standin` with the API application."""
    app = web.Application(middlewares=[_check_files_token], client_max_size=1024**3)
    app[STANDIN_KEY] = standin
    for method in ("GET", "HEAD", "PUT", "DELETE"):
        app.router.add_route(method, "/{ws}/files/{path:.*}", _file)
    return app
