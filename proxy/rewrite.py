"""Translate absolute URLs between the upstream's origins and the proxy's, both ways.

Rules this module keeps:

1. Only a whole origin matches. A source such as `http://host:80` matches only
   where the next character ends an origin: `/`, `?`, `#`, a quote, `<`, `>`,
   whitespace, a JSON escape of one of those, or the end of the text. So it
   never matches inside `http://host:8080` or `http://host.evil`. The character
   before the scheme must not be one that could continue a scheme. The host is
   matched case-insensitively. The scheme must be lowercase, as URL serialisers
   write it: every pattern then starts with the literal `http`, which lets the
   regex engine skip text without links quickly.
2. The rest of a URL is kept byte for byte; only its prefix is replaced.
3. JSON may escape `/` as `\\/`. Each source matches in its plain form and its
   escaped form, and the replacement is written in the form that matched.
   NOTE: a `://` written as `:\\u002f\\u002f`, and scheme-relative `//host` links,
   are not matched, so such links keep pointing at the upstream.
4. Memory is bounded: `LinkRewriter` holds back at most `Rules.hold` bytes
   between chunks, which is the longest possible match plus its lookahead, so a
   match that straddles two chunks is still found.
5. Everything here is pure: no I/O, no settings object. Compiled rules are
   cached, so no pattern is compiled per chunk or per request.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from proxy.routes import WORKSPACE_PLACEHOLDER

# One DNS label, as `proxy.vault.WORKSPACE_NAME` allows for workspace names.
_LABEL = rb"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_LABEL_MAX = 63
# Bytes that may come before "http" inside a longer scheme, such as "xhttp://".
_SCHEME_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+.-")
_COMMON_PREFIX = b"http"
# Characters that end an origin or a path prefix: a delimiter, or a JSON escape of one.
_BOUNDARY = rb"""(?=[/?#"<>\s]|\\[/"]|\\u00(?:2[23fF]|3[cCeEfF])|\Z)"""
_BOUNDARY_MAX = len(rb"\u002f")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
# Every source starts with `scheme://` (`_source_regex` enforces it), so every
# match contains one of these.
_SCHEME_SEPARATOR = b"://"
_ESCAPED_SCHEME_SEPARATOR = b":\\/\\/"

# Media types whose bodies are rewritten: JSON and every structured `+json` type.
_JSON_TYPES = frozenset({"application/json", "text/json"})
# Content codings the proxy can decode to rewrite a body.
DECODABLE_ENCODINGS = frozenset({"gzip", "x-gzip", "deflate"})
_IDENTITY = frozenset({"", "identity"})
# A target in a `Link` header value (RFC 8288): `<URI-reference>`.
_LINK_TARGET = re.compile(r"<([^<>]*)>")


@dataclass(frozen=True, slots=True)
class Translation:
    """A URL prefix `source` and the prefix `target` that replaces it.

    `source` may contain `{workspace}` once, matching one DNS label. `target`
    may contain it too, and then gets the label matched in `source`. `source`
    starts with an origin (`scheme://host[:port]`), optionally followed by a
    path prefix.
    """

    source: str
    target: str


@dataclass(frozen=True, slots=True)
class _Replacement:
    prefix: bytes
    suffix: bytes | None
    """Bytes after the workspace label, or None when the target has no placeholder."""
    workspace_group: str | None
    lower_workspace: bool = False
    """Whether the matched label is lower-cased: host names are case-insensitive, paths are not."""


@dataclass(frozen=True, slots=True)
class Rules:
    """Compiled translations: one pattern and the replacement for each alternative."""

    pattern: re.Pattern[bytes] | None
    replacements: dict[str, _Replacement]
    hold: int
    """Maximum number of bytes a `LinkRewriter` keeps back between chunks."""

    def replace(self, match: re.Match[bytes]) -> bytes:
        assert match.lastgroup is not None
        replacement = self.replacements[match.lastgroup]
        if replacement.suffix is None or replacement.workspace_group is None:
            return replacement.prefix
        workspace = match[replacement.workspace_group]
        if replacement.lower_workspace:
            workspace = workspace.lower()
        return replacement.prefix + workspace + replacement.suffix


@functools.lru_cache(maxsize=512)
def compile_rules(translations: tuple[Translation, ...]) -> Rules:
    """Compile `translations` into one pattern. At one position, the earlier translation wins."""
    alternatives: list[bytes] = []
    replacements: dict[str, _Replacement] = {}
    longest = 0
    for index, translation in enumerate(translations):
        for escaped in (False, True):
            name = f"t{index}{'e' if escaped else 'p'}"
            workspace_group = f"w{index}{'e' if escaped else 'p'}"
            regex, length = _source_regex(translation.source, escaped, workspace_group)
            alternatives.append(b"(?P<" + name.encode() + b">" + regex + b")")
            replacements[name] = _replacement(
                translation.target, escaped, workspace_group, _placeholder_in_host(translation.source)
            )
            longest = max(longest, length)
    if not alternatives:
        return Rules(pattern=None, replacements={}, hold=0)
    pattern = re.compile(_COMMON_PREFIX + b"(?:" + b"|".join(alternatives) + b")" + _BOUNDARY)
    return Rules(pattern=pattern, replacements=replacements, hold=longest + _BOUNDARY_MAX + 1)


def _source_regex(source: str, escaped: bool, workspace_group: str) -> tuple[bytes, int]:
    """Return the regex for one source prefix after its leading "http", and the longest match."""
    scheme, separator, rest = source.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in _DEFAULT_PORTS:
        raise ValueError(f"translation source {source!r} does not start with http:// or https://")
    authority, slash, path = rest.partition("/")
    path = slash + path
    default_port = _DEFAULT_PORTS[scheme]
    host, colon, port = authority.rpartition(":")
    if colon and "]" not in port and port == default_port:
        authority = host

    # The host is case-insensitive, and a default port may be written out or left off.
    separator_text = _escape_slashes("://", escaped)
    regex = re.escape(scheme[len("http") :].encode() + separator_text.encode())
    regex += b"(?i:" + _literal(authority, escaped, workspace_group) + b")"
    length = len(f"{scheme}{separator_text}{authority}")
    if ":" not in authority.rpartition("]")[2]:
        regex += b"(?::" + default_port.encode() + b")?"
        length += 1 + len(default_port)
    regex += _literal(path, escaped, workspace_group)
    length += len(_escape_slashes(path, escaped))
    if WORKSPACE_PLACEHOLDER in source:
        length += _LABEL_MAX - len(WORKSPACE_PLACEHOLDER)
    return regex, length


def _literal(text: str, escaped: bool, workspace_group: str) -> bytes:
    before, placeholder, after = _escape_slashes(text, escaped).partition(WORKSPACE_PLACEHOLDER)
    regex = re.escape(before.encode())
    if placeholder:
        regex += b"(?P<" + workspace_group.encode() + b">" + _LABEL + b")" + re.escape(after.encode())
    return regex


def _replacement(
    target: str, escaped: bool, workspace_group: str, lower_workspace: bool
) -> _Replacement:
    before, placeholder, after = _escape_slashes(target, escaped).partition(WORKSPACE_PLACEHOLDER)
    if not placeholder:
        return _Replacement(prefix=before.encode(), suffix=None, workspace_group=None)
    return _Replacement(
        prefix=before.encode(),
        suffix=after.encode(),
        workspace_group=workspace_group,
        lower_workspace=lower_workspace,
    )


def _placeholder_in_host(source: str) -> bool:
    authority = source.partition("://")[2].partition("/")[0]
    return WORKSPACE_PLACEHOLDER in authority


def _escape_slashes(text: str, escaped: bool) -> str:
    return text.replace("/", "\\/") if escaped else text


class LinkRewriter:
    """A streaming rewriter: feed it chunks, it returns rewritten chunks.

    Output is delayed by at most `rules.hold` bytes, so a URL split across two
    chunks is still translated. Call `finish` once at the end of the body.
    """

    def __init__(self, rules: Rules) -> None:
        self._rules = rules
        self._pending = b""
        # The last byte already returned, to tell "xhttp://" from "http://" across chunks.
        self._previous = b""

    @property
    def held_back(self) -> int:
        """Bytes received but not yet returned."""
        return len(self._pending)

    def feed(self, chunk: bytes) -> bytes:
        if self._rules.pattern is None:
            return chunk
        text = self._previous + self._pending + chunk
        start = len(self._previous)
        # A match that starts before `cut` is wholly inside `text`, with its lookahead.
        cut = len(text) - self._rules.hold
        if cut <= start:
            self._pending = text[start:]
            return b""
        output, end = self._rewrite(text, start, cut)
        self._previous = text[end - 1 : end]
        self._pending = text[end:]
        return output

    def finish(self) -> bytes:
        if self._rules.pattern is None or not self._pending:
            return b""
        text = self._previous + self._pending
        output, _ = self._rewrite(text, len(self._previous), len(text))
        self._pending = b""
        return output

    def _rewrite(self, text: bytes, start: int, cut: int) -> tuple[bytes, int]:
        """Rewrite matches that start in text[start:cut]. Return the output and where it ends."""
        assert self._rules.pattern is not None
        if _SCHEME_SEPARATOR not in text and _ESCAPED_SCHEME_SEPARATOR not in text:
            # No match is possible, and a substring test is far cheaper than the scan.
            return text[start:cut], cut
        pattern = self._rules.pattern
        pieces: list[bytes] = []
        position = start
        search_from = start
        while (match := pattern.search(text, search_from)) is not None:
            found = match.start()
            if found >= cut:
                break
            if found > 0 and text[found - 1] in _SCHEME_BYTES:
                # "xhttp://..." is another scheme: look again from the next byte.
                search_from = found + 1
                continue
            pieces.append(text[position:found])
            pieces.append(self._rules.replace(match))
            position = search_from = match.end()
        end = max(position, cut)
        pieces.append(text[position:end])
        return b"".join(pieces), end


def rewrite_text(text: str, rules: Rules) -> str:
    """Rewrite one whole string, such as a header value (read as Latin-1, as HTTP does)."""
    rewriter = LinkRewriter(rules)
    data = rewriter.feed(text.encode("latin-1")) + rewriter.finish()
    return data.decode("latin-1")


def translate_location(value: str, rules: Rules, relative_base: str) -> str:
    """Rewrite a `Location` or `Content-Location` value.

    An absolute URL is rewritten by `rules`. With a `relative_base` origin, an
    absolute path (`/x`, not `//x`) is first read against it, so a redirect under
    a workspace mount stays in that mount. A path no rule translates is kept as sent.
    """
    if relative_base and value.startswith("/") and not value.startswith("//"):
        absolute = relative_base + value
        translated = rewrite_text(absolute, rules)
        return value if translated == absolute else translated
    return rewrite_text(value, rules)


def translate_link(value: str, rules: Rules, relative_base: str) -> str:
    """Rewrite a `Link` header value: each `<target>` as `translate_location` does, the rest as text.

    So a root-relative target under a workspace mount gets the mount prefix, as a
    relative `Location` does. Relative-path targets (`<page-2>`) are kept as sent.
    """
    pieces: list[str] = []
    position = 0
    for target in _LINK_TARGET.finditer(value):
        pieces.append(rewrite_text(value[position : target.start()], rules))
        pieces.append("<" + translate_location(target[1], rules, relative_base) + ">")
        position = target.end()
    pieces.append(rewrite_text(value[position:], rules))
    return "".join(pieces)


def is_json_media_type(content_type: str | None) -> bool:
    """Tell whether a `Content-Type` value names JSON or a `+json` type."""
    if not content_type:
        return False
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type in _JSON_TYPES or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def content_coding(content_encoding: str | None) -> str | None:
    """Return the one coding a body must be decoded with ("" for none), or None if unsupported.

    Stacked codings (`gzip, gzip`) and codings outside `DECODABLE_ENCODINGS` are unsupported.
    """
    codings = [part.strip().lower() for part in (content_encoding or "").split(",")]
    codings = [coding for coding in codings if coding not in _IDENTITY]
    if not codings:
        return ""
    if len(codings) == 1 and codings[0] in DECODABLE_ENCODINGS:
        return codings[0]
    return None


def accept_decodable(accept_encoding: str | None) -> str | None:
    """Keep only the codings the proxy can decode from an `Accept-Encoding` value.

    Returns the filtered value, or None to leave the header out. `*` is dropped,
    so the upstream cannot pick a coding the proxy cannot rewrite.
    """
    if accept_encoding is None:
        return None
    kept = []
    for item in accept_encoding.split(","):
        coding = item.partition(";")[0].strip().lower()
        if coding in DECODABLE_ENCODINGS or coding == "identity":
            kept.append(item.strip())
    return ", ".join(kept) if kept else "identity"


class DecodeError(Exception):
    """A compressed body could not be decoded."""


class BodyDecoder:
    """Decode a gzip or deflate body chunk by chunk, with bounded output per step.

    "deflate" is meant to be zlib-wrapped (RFC 9110), but some servers send raw
    deflate; the first chunk decides which one this is.
    """

    OUTPUT_STEP = 256 * 1024

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._decompressor: zlib._Decompress | None = None
        self._started = False

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        data = chunk
        while data:
            if self._decompressor is None:
                self._decompressor = self._new_decompressor(data)
            try:
                output = self._decompressor.decompress(data, self.OUTPUT_STEP)
            except zlib.error as exc:
                raise DecodeError(f"invalid {self._coding} data: {exc}") from exc
            if output:
                yield output
            if self._decompressor.eof:
                # A gzip body may hold several members one after another.
                data = self._decompressor.unused_data
                self._decompressor = None
                if data and self._coding == "deflate":
                    raise DecodeError("data after the end of a deflate stream")
            else:
                data = self._decompressor.unconsumed_tail

    def finish(self) -> Iterator[bytes]:
        if self._decompressor is None:
            return
        try:
            output = self._decompressor.flush()
        except zlib.error as exc:
            raise DecodeError(f"invalid {self._coding} data: {exc}") from exc
        if output:
            yield output
        if not self._decompressor.eof:
            raise DecodeError(f"the {self._coding} stream ended early")

    def _new_decompressor(self, data: bytes) -> zlib._Decompress:
        if self._coding != "deflate":
            return zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)
        if self._started:
            raise DecodeError("data after the end of a deflate stream")
        self._started = True
        # A zlib header's first two bytes, read big-endian, are a multiple of 31.
        zlib_wrapped = len(data) >= 2 and (data[0] & 0x0F) == 8 and (data[0] << 8 | data[1]) % 31 == 0
        return zlib.decompressobj(wbits=zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
