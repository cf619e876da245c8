"""The one seam to the upstream: the HTTP client session, its pool, timeouts, TLS
and the translation of client library errors into the proxy's own errors.

Nothing else in the package imports the HTTP client. The session never follows
redirects, never decompresses, never stores cookies (a shared gateway must not
carry one user's cookies to another) and never reads `.netrc`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDictProxy
from yarl import URL

from proxy.errors import (
    ConfigError,
    FramingRejected,
    UpstreamBrokeOff,
    UpstreamError,
    UpstreamInvalid,
    UpstreamTimeout,
)

# The client's read buffer per upstream response; aiohttp pauses reading from the
# upstream at twice this, so it bounds the body bytes held per response. 1 MiB
# moved a 1 GiB loopback download about 8% faster than 256 KiB (bench/run).
CHUNK_SIZE = 1024 * 1024
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    connect_timeout: float
    read_timeout: float
    ca_bundle: Path | None = None


@dataclass(slots=True)
class UpstreamResponse:
    """The status and headers of an upstream response; the body is read with `Upstream.body`."""

    status: int
    reason: str | None
    headers: CIMultiDictProxy[str]
    _response: aiohttp.ClientResponse


class Upstream:
    """Owns the client session; one per running proxy."""

    def __init__(self, options: UpstreamOptions) -> None:
        self._options = options
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,
            ssl=make_ssl_context(self._options.ca_bundle),
            ttl_dns_cache=60,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._client_timeout(),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            trust_env=False,
            read_bufsize=CHUNK_SIZE,
        )

    def set_timeouts(self, connect_timeout: float, read_timeout: float) -> None:
        """Use these timeouts for requests sent from now on; requests in flight keep theirs."""
        self._options = replace(
            self._options, connect_timeout=connect_timeout, read_timeout=read_timeout
        )

    def _client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._options.connect_timeout,
            sock_read=self._options.read_timeout,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: aiohttp.StreamReader | bytes | AsyncIterable[bytes] | None,
    ) -> AsyncIterator[UpstreamResponse]:
        """Send one request to `url` (already encoded; sent byte for byte) and yield the response.

        Only errors of the upstream exchange are translated; an error raised by the
        caller inside the block (a client that went away, say) passes through as it is.
        """
        assert self._session is not None, "Upstream.start() was not awaited"
        target = URL(url, encoded=True)
        host = target.host or "?"
        try:
            response = await self._session.request(
                method,
                target,
                headers=headers,
                data=body,
                allow_redirects=False,
                proxy=proxy_for(target.scheme, host),
                timeout=self._client_timeout(),
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise UpstreamError(
                f"TLS certificate of upstream host {host} could not be verified: "
                f"{exc.certificate_error}; use --ca-bundle to trust a private CA",
                metric_kind="tls",
            ) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamTimeout(
                f"timed out connecting to upstream host {host}", metric_kind="connect"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(
                f"cannot connect to upstream host {host}: {_reason(exc)}", metric_kind="connect"
            ) from exc
        except (aiohttp.SocketTimeoutError, asyncio.TimeoutError) as exc:
            raise UpstreamTimeout(
                f"upstream host {host} sent no response for {self._options.read_timeout:g} s",
                metric_kind="timeout",
            ) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise UpstreamError(
                f"upstream host {host} closed or reset the connection", metric_kind="reset"
            ) from exc
        except aiohttp.ClientError as exc:
            if _client_body_failed(exc):
                raise FramingRejected(
                    "invalid chunked encoding in the request body, "
                    "so the upstream request was aborted",
                    close_connection=True,
                ) from exc
            raise UpstreamError(
                f"request to upstream host {host} failed: {_reason(exc)}", metric_kind="protocol"
            ) from exc

        if 100 <= response.status < 200:
            # aiohttp skips interim responses except 101, and the proxy never asks for an
            # upgrade: relaying a 101 would leave the client connection in a state that
            # the proxy goes on reading as HTTP. The upstream connection cannot be reused.
            status = response.status
            response.close()
            raise UpstreamInvalid(
                f"upstream host {host} sent status {status} to a request that asked for "
                "no protocol switch",
                metric_kind="protocol",
            )

        completed = False
        try:
            yield UpstreamResponse(response.status, response.reason, response.headers, response)
            completed = True
        finally:
            # A body not read to its end leaves the connection unusable: close it.
            if completed and response.content.is_eof():
                response.release()
            else:
                response.close()

    def body_started(self, response: UpstreamResponse) -> bool:
        """Tell whether body bytes, or the end of the body, have arrived before any read."""
        content = response._response.content
        return content.total_bytes > 0 or content.is_eof()

    def body_complete(self, response: UpstreamResponse) -> bool:
        """Tell whether the whole body has arrived, so no further read waits for the upstream."""
        return response._response.content.is_eof()

    async def body(self, response: UpstreamResponse) -> AsyncIterator[bytes]:
        """Yield the response body as it arrives; a failure mid-body raises `UpstreamBrokeOff`."""
        host = response._response.url.host or "?"
        stream = response._response.content
        try:
            while True:
                chunk = await stream.readany()
                if not chunk:
                    return
                yield chunk
        except (aiohttp.SocketTimeoutError, asyncio.TimeoutError) as exc:
            raise UpstreamBrokeOff(
                f"upstream host {host} sent nothing for {self._options.read_timeout:g} s "
                "in the middle of a response body",
                metric_kind="timeout",
            ) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientOSError,
                aiohttp.ServerDisconnectedError) as exc:
            raise UpstreamBrokeOff(
                f"upstream host {host} broke off the response body", metric_kind="reset"
            ) from exc


def make_ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Return a verifying TLS context: the system's CAs, plus `ca_bundle` when given."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{ca_bundle}: cannot load CA bundle: {_reason(exc)}") from None
    return context


@functools.lru_cache(maxsize=1024)
def proxy_for(scheme: str, host: str) -> str | None:
    """Return the outgoing HTTP proxy from HTTPS_PROXY/HTTP_PROXY for `host`, honouring NO_PROXY.

    Loopback hosts never go through a proxy.
    """
    if is_loopback_host(host):
        return None
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme)
    if proxy is None or urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxy


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client_body_failed(exc: BaseException) -> bool:
    """Tell whether `exc` is aiohttp's wrapper for an error in reading the client's request body.

    aiohttp's client raises a plain `ClientConnectionError` caused by the body's
    own error when it cannot read the body it is sending: `RequestPayloadError`
    or, from the pure-Python parser, an `HttpProcessingError` such as
    `TransferEncodingError` (checked with aiohttp 3.14.5).
    """
    return type(exc) is aiohttp.ClientConnectionError and isinstance(
        exc.__cause__, (web.RequestPayloadError, HttpProcessingError)
    )


def _reason(exc: BaseException) -> str:
    """Describe a client error in a few words; never quote what the upstream sent."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.strerror or type(exc.os_error).__name__
    if isinstance(exc, aiohttp.ClientResponseError):
        return "the upstream sent an invalid HTTP response"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
