"""`eodh-proxy explain URL`: what the proxy would do with a request, without sending anything.

It runs the same checks as the request handler, in the same order: the `Host`
check (when the URL names a host), the resolver, then the credential choice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from proxy import guards, routes
from proxy.credentials import choose_credential
from proxy.errors import ClientRequestError
from proxy.settings import Settings
from proxy.vault import Credential, Vault


@dataclass(frozen=True, slots=True)
class Explanation:
    """The proxy's decisions for one URL."""

    route: routes.Route
    credential: Credential | None
    upstream_url: str


def explain(url: str, settings: Settings, vault: Vault) -> Explanation:
    """Decide what the proxy would do with `url`, or raise the `ProxyError` it would respond with."""
    host, target = split_url(url)
    if host is not None:
        guards.check_host(host, guards.HostPolicy(settings.allowed_hosts, settings.allowed_origins))
    route = routes.resolve(target, routes.parse_families(settings.routes))
    credential = choose_credential(route, vault, settings.default_workspace)
    upstream_url = routes.upstream_url(route, str(settings.upstream), settings.files_upstream)
    return Explanation(route=route, credential=credential, upstream_url=upstream_url)


def split_url(url: str) -> tuple[str | None, str]:
    """Split `http://HOST/path?query` or `/path?query` into the host and the raw target.

    The path and query are kept exactly as given, as a client would send them.
    A fragment is dropped, since clients never send one.
    """
    text = url.strip().partition("#")[0]
    if text.startswith("/"):
        return None, text
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise ClientRequestError(
            f"invalid URL {text!r} (expected http://HOST:PORT/path or a path starting with '/')"
        )
    if scheme.lower() != "http":
        raise ClientRequestError(f"the proxy serves http://, not {scheme}://")
    slash = min((index for index in (rest.find("/"), rest.find("?")) if index != -1), default=-1)
    authority, target = (rest, "/") if slash == -1 else (rest[:slash], rest[slash:])
    if "@" in authority:
        raise ClientRequestError("the URL must not contain a user name or password")
    if target.startswith("?"):
        target = "/" + target
    return authority, target


def render(explanation: Explanation, now: dt.datetime) -> list[str]:
    """Describe `explanation` in `name: value` lines; the token appears only as its fingerprint."""
    route = explanation.route
    if route.workspace is None:
        described = "public path (no workspace, sent without a token)"
    elif route.kind is routes.UpstreamKind.FILES:
        described = f"workspace files {route.mount}"
    elif route.mount:
        described = f"workspace mount {route.mount}"
    else:
        described = f"route family {route.family}"
    return [
        f"route:     {described}",
        f"workspace: {route.workspace or '-'}",
        f"token:     {_describe_token(explanation, now)}",
        f"upstream:  {explanation.upstream_url}",
    ]


def _describe_token(explanation: Explanation, now: dt.datetime) -> str:
    credential = explanation.credential
    if credential is None:
        return "none"
    text = f"{credential.token.fingerprint} (workspace {credential.workspace}"
    if credential.workspace != explanation.route.workspace:
        text += ", the default workspace"
    if credential.expires is not None:
        state = "expired" if credential.expired(now) else "expires"
        text += f", {state} {credential.expires:%Y-%m-%d %H:%M} UTC"
    return text + ")"
