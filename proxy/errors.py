"""One error tree for the proxy, named by fault, each with its HTTP status.

Errors a client caused map to 4xx, upstream failures to 502/504, and a user's
mistake in a config or vault file to `ConfigError`, which the command line turns
into one line and a non-zero exit. Details name what failed and where; they
never hold a token or an upstream request header.
"""

from __future__ import annotations

import json

PROBLEM_JSON = "application/problem+json"


class ConfigError(Exception):
    """A user's mistake in a config file, vault file or flag: one line, no traceback."""


class ProxyError(Exception):
    """An error the proxy answers itself, rendered as RFC 9457 problem details."""

    status = 500
    title = "Internal proxy error"
    kind = "internal"

    def __init__(
        self, detail: str, *, close_connection: bool = False, metric_kind: str = ""
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.close_connection = close_connection
        self.metric_kind = metric_kind or self.kind

    def problem(self) -> dict[str, object]:
        return {
            "type": f"urn:eodh-proxy:{self.kind}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }

    def body(self) -> bytes:
        return json.dumps(self.problem()).encode()

    def response_headers(self) -> dict[str, str]:
        """Return headers the error response needs besides Content-Type."""
        return {}


class ClientRequestError(ProxyError):
    status = 400
    title = "Bad request"
    kind = "bad-request"


class PathRejected(ClientRequestError):
    title = "Path rejected"
    kind = "path-rejected"


class HostNotAllowed(ClientRequestError):
    status = 421
    title = "Host not allowed"
    kind = "host-not-allowed"


class CrossSiteRejected(ClientRequestError):
    status = 403
    title = "Cross-site request rejected"
    kind = "cross-site"


class MethodNotAllowed(ClientRequestError):
    status = 405
    title = "Method not allowed"
    kind = "method-not-allowed"


class FramingRejected(ClientRequestError):
    """The request's body length could be read two ways (request smuggling)."""

    title = "Ambiguous message framing"
    kind = "bad-framing"


class VersionNotSupported(ClientRequestError):
    status = 505
    title = "HTTP version not supported"
    kind = "version-not-supported"


class UpgradeRejected(ClientRequestError):
    status = 501
    title = "Protocol upgrade not supported"
    kind = "upgrade-not-supported"


class NoToken(ClientRequestError):
    status = 403
    title = "No token for workspace"
    kind = "no-token"


class ClientUnauthorized(ClientRequestError):
    """No valid gateway client credential: the client should retry with HTTP Basic."""

    status = 401
    title = "Client credentials required"
    kind = "client-unauthorized"

    def __init__(
        self, detail: str, *, presented: bool = False, known_client: str | None = None
    ) -> None:
        super().__init__(detail)
        # Whether the request carried a credential at all, as opposed to none.
        self.presented = presented
        # The client whose name came with a wrong key. An unknown presented name is
        # never kept, because a user may have typed a key in its place.
        self.known_client = known_client

    def response_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="eodh-proxy"'}


class ClientForbidden(ClientRequestError):
    status = 403
    title = "Not granted to this client"
    kind = "client-forbidden"


class TooManyFailures(ClientRequestError):
    status = 429
    title = "Too many failed client credentials"
    kind = "too-many-failures"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def response_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UpstreamError(ProxyError):
    status = 502
    title = "Upstream unreachable"
    kind = "upstream-unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    title = "Upstream timed out"
    kind = "upstream-timeout"


class UpstreamInvalid(UpstreamError):
    """The upstream sent a response the proxy cannot relay correctly."""

    title = "Invalid upstream response"
    kind = "upstream-invalid"


class UpstreamBrokeOff(UpstreamError):
    """The upstream closed or failed while a response body was being relayed."""

    title = "Upstream broke off"
    kind = "upstream-broke-off"
