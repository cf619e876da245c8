"""A bounded fuzz of raw request lines and headers against the running proxy.

Each request starts valid: a workspace or public path, and headers that try
to steer the route or the token. It then gets up to two twists, such as
another method, version, Host or line ending, a target from the path property
test, a hostile header, or ambiguous framing. Whatever the proxy answers, what the recording
upstream receives must keep the invariant: a token arrives only on a path
that the upstream (and the lenient servers in `tests.strict`) route to that
token's workspace, the target arrives byte for byte as sent, with one
Authorization header at most, the upstream's own Host, and no header smuggled
in through a target or a header value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess, raw_request
from tests.strict import LENIENT_READINGS, strict_route
from tests.test_routes_property import TARGETS
from tests.upstream import TOKENS, UpstreamServer

# Headers that try to steer the route or the token; none is a reason to reject.
STEERING = [
    "X-Original-URL: /api/workspaces/beta-ws/x",
    "X-Rewrite-URL: /api/workspaces/beta-ws/x",
    "X-Forwarded-Prefix: /api/workspaces/beta-ws",
    "X-Forwarded-Host: evil.example",
    "Forwarded: host=evil.example;proto=https",
    "Cookie: workspace=beta-ws",
    f"Authorization: Bearer {TOKENS['beta-ws']}",
    f"authorization: Bearer {TOKENS['gamma-ws']}",
    "Connection: keep-alive, Authorization",
]
# Headers that should get the request rejected, or that try to add a header.
HOSTILE = [
    "Origin: http://evil.example",
    "Origin: null",
    "Sec-Fetch-Site: cross-site",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "X-A: a\rX-Injected: 1",
    "X-A: a\nX-Injected: 1",
    "X-A: a\x00X-Injected: 1",
    " X-Injected: folded",
    "X-A:\x0bX-Injected: 1",
    "X-Injected : 1",
]
# Framing headers, each with a body that matches it so the proxy is never left
# waiting for bytes that do not come.
FRAMINGS = [
    (("Content-Length: 5",), b"hello"),
    (("Transfer-Encoding: chunked",), b"5\r\nhello\r\n0\r\n\r\n"),
    (("Transfer-Encoding: gzip, chunked",), b"5\r\nhello\r\n0\r\n\r\n"),
    (("Transfer-Encoding: chunked", "Content-Length: 5"), b"5\r\nhello\r\n0\r\n\r\n"),
    (("Content-Length: 5", "Content-Length: 5"), b"hello"),
    (("Transfer-Encoding : chunked",), b"5\r\nhello\r\n0\r\n\r\n"),
    (("Expect: 100-continue", "Content-Length: 5"), b"hello"),
]
TRAVERSALS = [
    "/../beta-ws/echo", "/..;/beta-ws/echo", "/%2e%2e/beta-ws", "/x/..%2f..%2fbeta-ws",
    "/%C0%AE%C0%AE/beta-ws", "/%EF%BC%8E%EF%BC%8E/beta-ws", "\\..\\beta-ws", "/.%2e/beta-ws",
]


@dataclass(frozen=True)
class Request:
    method: str = "GET"
    target: str = "/"
    workspace: str = ""
    version: str = "HTTP/1.1"
    host: str = "localhost"
    headers: tuple[str, ...] = ()
    body: bytes = b""
    line_end: str = "\r\n"
    twists: tuple[str, ...] = field(default=())

    def encode(self) -> bytes:
        request_line = f"{self.method} {self.target} {self.version}".rstrip(" ")
        lines = [request_line, f"Host: {self.host}", *self.headers, "Connection: close", ""]
        return (self.line_end.join(lines) + self.line_end).encode("latin-1") + self.body


valid_requests = st.builds(
    lambda family, workspace, tail, query, steering: Request(
        target=f"{family}/{workspace}{tail}{query}", workspace=workspace, headers=tuple(steering)
    ),
    st.sampled_from(["/api/workspaces", "/ades", USER_CATALOGS, "/api/catalogue/stac"]),
    st.sampled_from(["alpha-ws", "beta-ws", "gamma-ws"]),
    st.sampled_from(["", "/echo", "/echo/x", "/processes", "/x;v=1"]),
    st.sampled_from(["", "?workspace=beta-ws", "?next=/ades/beta-ws/../x"]),
    st.lists(st.sampled_from(STEERING), max_size=3, unique=True),
)


def twist(request: Request, kind: str, data: st.DataObject) -> Request:
    """Change one aspect of `request`."""
    if kind == "method":
        method = data.draw(st.sampled_from(["POST", "TRACE", "CONNECT", "OPTIONS", "get", "G T"]))
        return replace(request, method=method)
    if kind == "version":
        version = data.draw(st.sampled_from(["HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", "", "http/1.1"]))
        return replace(request, version=version)
    if kind == "host":
        host = data.draw(st.sampled_from(["evil.example", "localhost\x00.evil", "127.0.0.1", ""]))
        return replace(request, host=host)
    if kind == "line end":
        return replace(request, line_end="\n")
    if kind == "traversal":
        # Right after the workspace segment, where a ".." would leave the workspace.
        traversal = data.draw(st.sampled_from(TRAVERSALS))
        segment = "/" + request.workspace
        return replace(request, target=request.target.replace(segment, segment + traversal, 1))
    if kind == "target":
        target = data.draw(
            st.one_of(
                TARGETS,
                TARGETS.map(lambda path: "http://127.0.0.1:1" + path),
                st.just("*"),
                st.sampled_from(["\r", "\n", "\x00", "\t", " x", "#x"]).map(
                    lambda junk: request.target + junk
                ),
            )
        )
        return replace(request, target=target)
    if kind == "hostile header":
        header = data.draw(st.sampled_from(HOSTILE))
        return replace(request, headers=request.headers + (header,))
    framing, body = data.draw(st.sampled_from(FRAMINGS))
    return replace(request, method="POST", headers=request.headers + framing, body=body)


# Traversal is listed twice: it is the twist that can move a token to another workspace.
TWISTS = [
    "method", "version", "host", "line end", "traversal", "traversal", "target", "hostile header",
    "framing",
]


@st.composite
def requests(draw: st.DrawFn) -> Request:
    request = draw(valid_requests)
    kinds = draw(st.lists(st.sampled_from(TWISTS), max_size=2))
    data = draw(st.data())
    for kind in kinds:
        request = twist(request, kind, data)
    return replace(request, twists=tuple(kinds))


@settings(
    max_examples=500,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_fuzzed_requests_keep_token_invariant(
    proxy: ProxyProcess, upstream: UpstreamServer, request: Request
) -> None:
    data = request.encode()
    before = len(upstream.state.received)
    raw_request(proxy.port, data, read_timeout=5)
    forwarded = upstream.state.received[before:]
    if any(received.token_workspace for received in forwarded):
        event("forwarded with a token")
    elif forwarded:
        event("forwarded")
    else:
        event("rejected")

    for received in forwarded:
        assert received.raw_path == request.target, data
        assert len(received.headers.get("Authorization", [])) <= 1, data
        assert received.headers["Host"] == [upstream.origin.removeprefix("http://")], data
        assert "X-Injected" not in received.headers, data
        if received.token_workspace is None:
            continue
        assert strict_route(received.raw_path)[1] == received.token_workspace, data
        for name, reading in LENIENT_READINGS.items():
            assert reading(received.raw_path)[1] == received.token_workspace, (name, data)
