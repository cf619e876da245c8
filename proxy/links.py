"""Apply link translation to one request and its response.

`LinkTranslator` is built once from the settings. For each request it gives
an `Exchange`, which contains the compiled rules for both directions and adjusts
headers and bodies:

- Response bodies with a JSON media type are decoded if compressed (gzip or
  deflate), rewritten, and sent uncompressed and chunked: `Content-Encoding`,
  `Content-Length` and `Accept-Ranges` are dropped, a strong `ETag` becomes
  weak, and digests of the old bytes are dropped. Other bodies pass untouched.
  A range of such a body (`is_translated_part`) is never relayed, because its
  bytes and offsets are the upstream's.
- `Location` and `Content-Location` are always translated, `Link` only while
  rewriting is on. Under a mount or `/files-of/`, a root-relative URL in any of
  them is read against that route's upstream and translated like an absolute one.
- Links to any workspace's files host become `/files-of/<workspace>/...` on the
  proxy. Links to the API upstream get the mount prefix, if the request had one.
- JSON request bodies get the reverse translation. A body of known length up
  to `BUFFERED_REQUEST_MAX` is rewritten whole and keeps a `Content-Length`;
  a longer or chunked one is streamed upstream chunked.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from multidict import CIMultiDict

from proxy.errors import UpstreamBrokeOff
from proxy.rewrite import (
    BodyDecoder,
    DecodeError,
    LinkRewriter,
    Rules,
    Translation,
    accept_decodable,
    compile_rules,
    content_coding,
    is_json_media_type,
    translate_link,
    translate_location,
)
from proxy.routes import (
    FILES_SEGMENT,
    MOUNT_SEGMENT,
    WORKSPACE_PLACEHOLDER,
    Route,
    UpstreamKind,
    files_base,
)

# A JSON request body of known length up to this many bytes is read whole, so that it
# keeps a Content-Length once rewritten (object stores often require one on PUT). Each
# such request keeps two copies of its body in memory while it is rewritten.
BUFFERED_REQUEST_MAX = 8 * 1024 * 1024
_LOCATION_HEADERS = frozenset({"location", "content-location"})
# Headers that describe the exact bytes of a body, which rewriting changes.
_BODY_DIGEST_HEADERS = frozenset({"content-md5", "digest", "content-digest", "repr-digest"})
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class BodyRewrite:
    """The plan for one response body: the coding to decode first ("" for none) and the rules."""

    coding: str
    rules: Rules

    async def apply(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """Yield the rewritten body. A body that cannot be decoded raises `UpstreamBrokeOff`."""
        rewriter = LinkRewriter(self.rules)
        decoder = BodyDecoder(self.coding) if self.coding else None
        try:
            async for chunk in chunks:
                for piece in decoder.feed(chunk) if decoder is not None else (chunk,):
                    output = rewriter.feed(piece)
                    if output:
                        yield output
            if decoder is not None:
                for piece in decoder.finish():
                    output = rewriter.feed(piece)
                    if output:
                        yield output
        except DecodeError as exc:
            raise UpstreamBrokeOff(
                f"the upstream sent a JSON body that cannot be decoded: {exc}",
                metric_kind="decode",
            ) from exc
        tail = rewriter.finish()
        if tail:
            yield tail


class LinkTranslator:
    """Translation settings for the whole proxy. `exchange` returns the rules for one request."""

    def __init__(self, upstream_origin: str, files_upstream: str, *, enabled: bool) -> None:
        self.upstream_origin = upstream_origin
        self.files_upstream = files_upstream
        self.enabled = enabled
        # Building an exchange costs a few percent of a small request, and most
        # requests repeat one client origin and route kind. The cache is bounded
        # because the client origin comes from the request's Host header.
        self._cached_exchange = functools.lru_cache(maxsize=256)(self._build_exchange)

    def exchange(self, client_origin: str, route: Route) -> Exchange:
        """Return the rules for `route`, requested from the proxy at `client_origin`."""
        # Only these parts of the route decide the rules (see `_build_exchange`).
        workspace = route.workspace if route.kind is UpstreamKind.FILES and route.mount else None
        return self._cached_exchange(client_origin, route.kind, route.mount, workspace)

    def _build_exchange(
        self, client_origin: str, kind: UpstreamKind, mount: str, workspace: str | None
    ) -> Exchange:
        files_on_proxy = f"{client_origin}/{FILES_SEGMENT}/{WORKSPACE_PLACEHOLDER}"
        api_prefix = mount if kind is UpstreamKind.API else ""
        to_client = (
            Translation(self.files_upstream, files_on_proxy),
            Translation(self.upstream_origin, client_origin + api_prefix),
        )
        # Links under any mount go back to the API, whichever route this request took.
        to_upstream = (
            Translation(files_on_proxy, self.files_upstream),
            Translation(
                f"{client_origin}/{MOUNT_SEGMENT}/{WORKSPACE_PLACEHOLDER}", self.upstream_origin
            ),
            Translation(client_origin, self.upstream_origin),
        )
        return Exchange(
            enabled=self.enabled,
            to_client=compile_rules(to_client),
            to_upstream=compile_rules(to_upstream),
            relative_base=self._origin_of(kind, workspace) if mount else "",
        )

    def _origin_of(self, kind: UpstreamKind, workspace: str | None) -> str:
        if kind is UpstreamKind.FILES and workspace is not None:
            parts = urlsplit(files_base(self.files_upstream, workspace))
            return f"{parts.scheme}://{parts.netloc}"
        return self.upstream_origin


@dataclass(frozen=True, slots=True)
class Exchange:
    """The translation rules for one request, in both directions."""

    enabled: bool
    to_client: Rules
    to_upstream: Rules
    relative_base: str
    """The upstream origin a relative `Location` is read against, or "" to leave it as sent."""

    def adjust_request_headers(self, headers: CIMultiDict[str]) -> None:
        """Ask only for codings the proxy can decode, so every JSON response can be rewritten."""
        if not self.enabled or "Accept-Encoding" not in headers:
            return
        value = accept_decodable(", ".join(headers.getall("Accept-Encoding")))
        headers.popall("Accept-Encoding")
        if value is not None:
            headers["Accept-Encoding"] = value

    def request_body_rewrite(self, headers: CIMultiDict[str]) -> Rules | None:
        """Return the rules for a JSON request body, or None to send it untouched."""
        if not self.enabled or not is_json_media_type(headers.get("Content-Type")):
            return None
        if content_coding(headers.get("Content-Encoding")) != "":
            return None
        return self.to_upstream

    def response_body_rewrite(
        self, status: int, content_type: str | None, content_encoding: str | None
    ) -> BodyRewrite | None:
        """Decide whether a response body is rewritten, from its status and headers.

        A HEAD response gets the same decision as GET, so its headers match.
        """
        # NOTE: URLs are matched as ASCII bytes, so JSON in UTF-16 or UTF-32 (allowed before
        # RFC 8259, which requires UTF-8) passes unchanged.
        if not self.enabled or not is_json_media_type(content_type):
            return None
        if status in _NO_BODY_STATUSES or status == 206 or status < 200:
            return None
        coding = content_coding(content_encoding)
        if coding is None:
            return None
        return BodyRewrite(coding=coding, rules=self.to_client)

    def is_translated_part(self, status: int, headers: Mapping[str, str]) -> bool:
        """Tell whether a response is a range of a JSON document this exchange would translate.

        Its bytes are the upstream's, untranslated, and its offsets count the
        upstream's bytes, so no range of them fits the translated document a client
        holds. Such a response is a 206, or any response with `Content-Range` (a 416
        gives the upstream's length). A `multipart/byteranges` 206 is not JSON, so it
        is not detected. NOTE: its parts reach the client untranslated.
        """
        if status != 206 and "Content-Range" not in headers:
            return False
        return (
            self.enabled
            and is_json_media_type(headers.get("Content-Type"))
            and content_coding(headers.get("Content-Encoding")) is not None
        )

    def cannot_rewrite(self, content_type: str | None, content_encoding: str | None) -> bool:
        """Tell whether a JSON body must pass untranslated because its coding cannot be decoded."""
        return (
            self.enabled
            and is_json_media_type(content_type)
            and content_coding(content_encoding) is None
        )

    def response_headers(
        self, headers: Iterable[tuple[str, str]], body: BodyRewrite | None
    ) -> Iterable[tuple[str, str]]:
        """Yield the response headers with links translated and body headers made to agree."""
        for name, value in headers:
            lower = name.lower()
            if lower in _LOCATION_HEADERS:
                value = translate_location(value, self.to_client, self.relative_base)
            elif lower == "link" and self.enabled:
                value = translate_link(value, self.to_client, self.relative_base)
            elif body is not None:
                if lower in ("content-length", "accept-ranges") or lower in _BODY_DIGEST_HEADERS:
                    continue
                if lower == "content-encoding" and body.coding:
                    continue
                if lower == "etag" and not value.startswith("W/"):
                    # The bytes differ from the upstream's, and a range of them would not
                    # match. NOTE: an If-Match with this weak tag fails at the upstream,
                    # which compares strongly.
                    value = "W/" + value
            yield name, value


async def rewrite_stream(chunks: AsyncIterable[bytes], rules: Rules) -> AsyncIterator[bytes]:
    """Yield `chunks` rewritten by `rules`, with the held-back tail at the end."""
    rewriter = LinkRewriter(rules)
    async for chunk in chunks:
        output = rewriter.feed(chunk)
        if output:
            yield output
    tail = rewriter.finish()
    if tail:
        yield tail


def rewrite_whole(body: bytes, rules: Rules) -> bytes:
    rewriter = LinkRewriter(rules)
    return rewriter.feed(body) + rewriter.finish()
