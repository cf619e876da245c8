"""Large bodies stream through the proxy process in both directions with bounded memory.

Each transfer is checked at the far end for size and SHA-256, for its framing (a known
Content-Length stays one, chunked stays chunked), and against the proxy's peak resident
memory (VmHWM), which must stay far below the transfer size.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator

import pytest
import requests

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess
from tests.upstream import BLOCK

TRANSFER_SIZE = 512 * 1024 * 1024
MEMORY_LIMIT_KIB = 100 * 1024
CHUNK = BLOCK * 16  # 1 MiB of the stand-in's repeating pattern


def pattern_chunks(size: int) -> Iterator[bytes]:
    """Yield `size` bytes of the pattern the stand-in's download route sends."""
    remaining = size
    while remaining:
        chunk = CHUNK[: min(remaining, len(CHUNK))]
        yield chunk
        remaining -= len(chunk)


@functools.cache
def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern_chunks(size):
        digest.update(chunk)
    return digest.hexdigest()


class SizedPattern:
    """An iterable body of known length, so requests sends a Content-Length, not chunks."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self) -> Iterator[bytes]:
        return pattern_chunks(self.size)

    def __len__(self) -> int:
        return self.size


def download(url: str) -> tuple[requests.Response, int, str]:
    """Download `url` as a stream and return the response, the body size and its SHA-256."""
    digest = hashlib.sha256()
    size = 0
    with requests.get(url, stream=True, timeout=30) as response:
        for chunk in response.raw.stream(len(CHUNK), decode_content=False):
            digest.update(chunk)
            size += len(chunk)
    return response, size, digest.hexdigest()


def test_large_download_keeps_content_length(proxy: ProxyProcess) -> None:
    url = f"{proxy.url}{USER_CATALOGS}/alpha-ws/download?size={TRANSFER_SIZE}"
    response, size, sha256 = download(url)

    assert response.status_code == 200
    assert response.headers.get("Content-Length") == str(TRANSFER_SIZE)
    assert "Transfer-Encoding" not in response.headers
    assert size == TRANSFER_SIZE
    assert sha256 == pattern_sha256(TRANSFER_SIZE)
    assert proxy.rss_peak_kib() < MEMORY_LIMIT_KIB


def test_large_chunked_download_stays_chunked(proxy: ProxyProcess) -> None:
    url = f"{proxy.url}{USER_CATALOGS}/alpha-ws/download?size={TRANSFER_SIZE}&framing=chunked"
    response, size, sha256 = download(url)

    assert response.status_code == 200
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.headers
    assert size == TRANSFER_SIZE
    assert sha256 == pattern_sha256(TRANSFER_SIZE)
    assert proxy.rss_peak_kib() < MEMORY_LIMIT_KIB


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_large_upload_streams_unchanged(proxy: ProxyProcess, framing: str) -> None:
    body = SizedPattern(TRANSFER_SIZE) if framing == "content-length" else pattern_chunks(
        TRANSFER_SIZE
    )
    response = requests.put(
        f"{proxy.url}{USER_CATALOGS}/alpha-ws/upload",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    seen = response.json()

    assert response.status_code == 200
    if framing == "content-length":
        assert seen["content_length"] == str(TRANSFER_SIZE)
        assert seen["transfer_encoding"] is None
    else:
        assert seen["transfer_encoding"] == "chunked"
        assert seen["content_length"] is None
    assert seen["size"] == TRANSFER_SIZE
    assert seen["sha256"] == pattern_sha256(TRANSFER_SIZE)
    assert proxy.rss_peak_kib() < MEMORY_LIMIT_KIB
