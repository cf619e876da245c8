"""`eodh-proxy explain URL`: what the proxy would do with a request, without sending anything.

It runs the request handler's checks with the same functions and in the same
order. First come the `Host` check (when the URL names a host), the method and the
client credential (when the vault lists clients). Then come the resolver, the
grants and the credential choice. A client key given in the URL is checked and
never printed.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from urllib.parse import unquote

from proxy import guards, routes
from proxy.admin import ENDPOINTS, AdminNotFound, admin_path, check_metrics_reader, endpoint_of
from proxy.clients import Client
from proxy.credentials import choose_granted_credential
from proxy.errors import ClientRequestError, MethodNotAllowed
from proxy.settings import Settings
from proxy.vault import Credential, Vault


@dataclass(frozen=True, slots=True)
class Explanation:
    """The proxy's decisions for one URL."""

    route: routes.Route
    credential: Credential | None
    upstream_url: str
    client: Client | None = None
    """The gateway client the URL's credentials name, or None when the vault lists no clients."""
    admin_endpoint: str | None = None
    """The proxy's own endpoint (`healthz`, say) that handles the request, or None."""


@dataclass(frozen=True, slots=True)
class ProxyUrl:
    """A URL as a client sends it to the proxy: the parts `explain` checks."""

    host: str | None
    """The `Host` header value (host and port), or None for a bare path."""
    target: str
    """The raw path and query, as the request line carries them."""
    user: str | None = None
    key: str | None = field(default=None, repr=False)
    """The client key from `user:key@`, sent as HTTP Basic; None when the URL has none."""

    def authorization_values(self) -> list[str]:
        """Return the `Authorization` header values a client such as curl sends for this URL."""
        if self.user is None:
            return []
        credential = f"{self.user}:{self.key or ''}".encode()
        return ["Basic " + base64.b64encode(credential).decode("ascii")]


def explain(url: str, settings: Settings, vault: Vault, method: str = "GET") -> Explanation:
    """Decide what the proxy would do with `url`, or raise the `ProxyError` it would respond with."""
    parsed = split_url(url)
    if parsed.host is not None:
        policy = guards.HostPolicy(
            settings.allowed_hosts + guards.listen_host_names(settings.listen_host),
            settings.allowed_origins,
        )
        guards.check_host(parsed.host, policy)
    guards.check_method(method, {})

    client = None
    path = parsed.target.partition("?")[0]
    if vault.clients and path not in guards.CLIENT_AUTH_EXEMPT_PATHS:
        client = guards.authenticate_client(parsed.authorization_values(), vault.clients)

    rest = admin_path(parsed.target)
    if rest is not None:
        return _explain_admin(parsed.target, rest, method, client)

    route = routes.resolve(parsed.target, routes.parse_families(settings.routes))
    credential = choose_granted_credential(
        route, vault, settings.default_workspace, client, method
    )
    upstream_url = routes.upstream_url(route, str(settings.upstream), settings.files_upstream)
    return Explanation(route=route, credential=credential, upstream_url=upstream_url, client=client)


def _explain_admin(target: str, rest: str, method: str, client: Client | None) -> Explanation:
    """Explain a request for one of the proxy's own `/_proxy/` endpoints, never sent upstream."""
    endpoint = endpoint_of(rest)
    if endpoint is None:
        listed = ", ".join(f"/{routes.ADMIN_SEGMENT}/{name}" for name in ENDPOINTS)
        raise AdminNotFound(f"no admin endpoint at this path (expected one of: {listed})")
    if method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"/{routes.ADMIN_SEGMENT}/{endpoint} accepts only GET and HEAD")
    if endpoint == "metrics":
        check_metrics_reader(client)
    route = routes.Route(family=None, workspace=None, upstream_target=target)
    return Explanation(
        route=route, credential=None, upstream_url="", client=client, admin_endpoint=endpoint
    )


def split_url(url: str) -> ProxyUrl:
    """Split `http://[USER:KEY@]HOST/path?query` or `/path?query` into its parts.

    The path and query are kept exactly as given, as a client would send them.
    A fragment is dropped, since clients never send one. The user name and key are
    percent-decoded, as curl does.
    """
    text = url.strip().partition("#")[0]
    if text.startswith("/"):
        return ProxyUrl(host=None, target=text)
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise ClientRequestError(
            f"invalid URL {_without_userinfo(text)!r} "
            "(expected http://HOST:PORT/path or a path starting with '/')"
        )
    if scheme.lower() != "http":
        raise ClientRequestError(f"the proxy serves http://, not {scheme}://")
    slash = min((index for index in (rest.find("/"), rest.find("?")) if index != -1), default=-1)
    authority, target = (rest, "/") if slash == -1 else (rest[:slash], rest[slash:])
    if target.startswith("?"):
        target = "/" + target
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return ProxyUrl(host=authority, target=target)
    user, _, key = userinfo.partition(":")
    return ProxyUrl(host=host, target=target, user=unquote(user), key=unquote(key))


def _without_userinfo(text: str) -> str:
    """Return `text` with anything up to an "@" replaced, so an error message shows no key."""
    _, at, rest = text.rpartition("@")
    return "…@" + rest if at else text


def render(explanation: Explanation, now: dt.datetime) -> list[str]:
    """Describe `explanation` in `name: value` lines; the token appears only as its fingerprint."""
    route = explanation.route
    if explanation.admin_endpoint is not None:
        described = f"proxy endpoint /{routes.ADMIN_SEGMENT}/{explanation.admin_endpoint}"
    elif route.workspace is None:
        described = "public path (no workspace, sent without a token)"
    elif route.kind is routes.UpstreamKind.FILES:
        described = f"workspace files {route.mount}"
    elif route.mount:
        described = f"workspace mount {route.mount}"
    else:
        described = f"route family {route.family}"
    lines = []
    client = explanation.client
    if client is not None:
        lines.append(
            f"client:    {client.name} (workspaces {client.describe_workspaces()}; "
            f"methods {client.describe_methods()})"
        )
    return [
        *lines,
        f"route:     {described}",
        f"workspace: {route.workspace or '-'}",
        f"token:     {_describe_token(explanation, now)}",
        f"upstream:  {explanation.upstream_url or 'none (the proxy answers itself)'}",
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
