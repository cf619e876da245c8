"""Render the proxy's own errors as `application/problem+json` responses (RFC 9457)."""

from __future__ import annotations

from aiohttp import web

from proxy.errors import PROBLEM_JSON, ProxyError
from proxy.headers import add_browser_safety_headers


def problem_response(error: ProxyError) -> web.Response:
    response = web.Response(
        status=error.status,
        body=error.body(),
        content_type=PROBLEM_JSON,
        headers=error.response_headers(),
    )
    add_browser_safety_headers(response.headers)
    if error.close_connection:
        response.force_close()
    return response
