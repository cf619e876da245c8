"""Link translation through the proxy process: JSON bodies, headers, codings, request bodies."""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from proxy.links import BUFFERED_REQUEST_MAX
from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess, raw_request
from tests.upstream import PUBLIC, UpstreamServer, links_document


def expected_links(client: str, upstream: UpstreamServer) -> dict:
    """`links_document` as the client should see it: upstream links moved to `client`."""
    document = json.loads(links_document(upstream.origin))
    for link in document["links"][:2]:
        link["href"] = link["href"].replace(upstream.origin, client)
    document["root"] = client
    return document


@pytest.fixture(scope="module")
def unrewritten_proxy(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str], tmp_path_factory
) -> Iterator[ProxyProcess]:
    config = tmp_path_factory.mktemp("config") / "config.yaml"
    config.write_text("rewrite_links: false\n")
    process = ProxyProcess(
        ["serve", "--config", str(config), "--listen", "127.0.0.1:0",
         "--upstream", upstream.origin, "--vault", str(vault_file)],
        env=isolated_env,
    ).wait_ready()
    yield process
    process.stop()


def test_json_links_point_at_proxy(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    response = requests.get(f"{proxy.url}{PUBLIC}/links", timeout=10)
    assert response.json() == expected_links(proxy.url, upstream)


def test_links_follow_host_client_sent(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    client = f"http://localhost:{proxy.port}"
    response = requests.get(f"{client}{PUBLIC}/links", timeout=10)
    assert response.json() == expected_links(client, upstream)


def test_foreign_and_other_port_links_untouched(proxy: ProxyProcess) -> None:
    links = requests.get(f"{proxy.url}{PUBLIC}/links", timeout=10).json()["links"]
    assert links[2]["href"] == "https://objects.example.org/bucket/key"
    assert links[3]["href"].endswith(":4430/elsewhere")
    assert not links[3]["href"].startswith(proxy.url)


def test_escaped_slashes_translated(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    response = requests.get(f"{proxy.url}{PUBLIC}/links?escaped=1", timeout=10)
    escaped_self = f"{proxy.url}{PUBLIC}/links".replace("/", "\\/")
    assert f'"href": "{escaped_self}"'.encode() in response.content
    assert response.json() == expected_links(proxy.url, upstream)


@pytest.mark.parametrize("media_type", ["application/geo+json", "application/problem+json",
                                        "application/vnd.oai.openapi+json;version=3.0"])
def test_json_family_types_translated(
    proxy: ProxyProcess, upstream: UpstreamServer, media_type: str
) -> None:
    response = requests.get(f"{proxy.url}{PUBLIC}/links", params={"type": media_type}, timeout=10)
    assert response.json() == expected_links(proxy.url, upstream)


@pytest.mark.parametrize("media_type", ["text/plain", "application/octet-stream", "text/html"])
def test_non_json_body_untouched(
    proxy: ProxyProcess, upstream: UpstreamServer, media_type: str
) -> None:
    response = requests.get(f"{proxy.url}{PUBLIC}/links", params={"type": media_type}, timeout=10)
    assert response.content == links_document(upstream.origin)
    assert response.headers["Content-Length"] == str(len(response.content))


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_json_decoded_and_translated(
    proxy: ProxyProcess, upstream: UpstreamServer, encoding: str
) -> None:
    response = requests.get(
        f"{proxy.url}{PUBLIC}/links", params={"encoding": encoding}, stream=True, timeout=10
    )
    raw = response.raw.read(decode_content=False)
    assert "Content-Encoding" not in response.headers
    assert json.loads(raw) == expected_links(proxy.url, upstream)


def test_undecodable_json_passed_and_logged(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    response = requests.get(
        f"{proxy.url}{PUBLIC}/links", params={"encoding": "x-unknown"}, stream=True, timeout=10
    )
    assert response.raw.read(decode_content=False) == links_document(upstream.origin)[::-1]
    assert response.headers["Content-Encoding"] == "x-unknown"
    assert "coding 'x-unknown' passed untranslated" in proxy.wait_for_line("passed untranslated")


def test_invalid_gzip_json_aborts_connection(proxy: ProxyProcess) -> None:
    """The body turns out invalid after the response began, so the connection is aborted.

    The client never gets a response that looks complete.
    """
    reply = raw_request(
        proxy.port,
        f"GET {PUBLIC}/gzip?corrupt=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        .encode(),
    )
    assert not reply.endswith(b"0\r\n\r\n"), reply[:200]
    assert "JSON body that cannot be decoded" in proxy.wait_for_line("cannot be decoded")


def test_request_body_of_buffer_limit_rewritten(
    proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    head = f'{{"href": "{proxy.url}/x", "pad": "'.encode()
    body = head + b"p" * (BUFFERED_REQUEST_MAX - len(head) - 2) + b'"}'
    assert len(body) == BUFFERED_REQUEST_MAX
    response = requests.post(
        f"{proxy.url}{USER_CATALOGS}/alpha-ws/mirror",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert json.loads(response.content)["href"] == f"{upstream.origin}/x"
    assert response.headers["X-Received-Content-Length"] == str(len(response.content))


def test_rewritten_body_sent_chunked(proxy: ProxyProcess) -> None:
    reply = raw_request(
        proxy.port,
        f"GET {PUBLIC}/links HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode(),
    )
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert b"transfer-encoding: chunked" in head
    assert b"content-length" not in head


def test_body_headers_made_to_agree(proxy: ProxyProcess) -> None:
    response = requests.get(f"{proxy.url}{PUBLIC}/links", timeout=10)
    assert response.headers["ETag"] == 'W/"v1"'
    assert "Content-MD5" not in response.headers


def test_head_headers_match_get(proxy: ProxyProcess) -> None:
    head = requests.head(f"{proxy.url}{PUBLIC}/links?encoding=gzip", timeout=10)
    assert head.status_code == 200
    assert "Content-Length" not in head.headers
    assert "Content-Encoding" not in head.headers


def test_translated_json_drops_accept_ranges(proxy: ProxyProcess) -> None:
    """A translated body has other bytes than the upstream's, so no range of it can be served."""
    response = requests.get(f"{proxy.url}{PUBLIC}/links", timeout=10)
    assert "Accept-Ranges" not in response.headers


def test_untranslated_body_keeps_accept_ranges(proxy: ProxyProcess) -> None:
    response = requests.get(f"{proxy.url}{PUBLIC}/links?type=text/plain", timeout=10)
    assert response.headers["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize(
    "query", ["", "?encoding=gzip", "?type=application/geo%2Bjson"]
)
def test_range_of_json_answered_whole(
    proxy: ProxyProcess, upstream: UpstreamServer, query: str
) -> None:
    """A partial JSON response would be untranslated bytes: the whole document comes instead."""
    response = requests.get(
        f"{proxy.url}{PUBLIC}/links{query}", headers={"Range": "bytes=10-"}, timeout=10
    )
    assert response.status_code == 200
    assert "Content-Range" not in response.headers
    assert response.json() == expected_links(proxy.url, upstream)
    assert "Range" not in upstream.state.received[-1].headers


def test_range_with_if_range_answered_whole(
    proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    response = requests.get(
        f"{proxy.url}{PUBLIC}/links",
        headers={"Range": "bytes=10-20", "If-Range": '"v1"'},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json() == expected_links(proxy.url, upstream)
    assert "If-Range" not in upstream.state.received[-1].headers


def test_unsatisfiable_range_of_json_answered_whole(
    proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    """A 416 gives the upstream's length, which is not the translated document's."""
    response = requests.get(
        f"{proxy.url}{PUBLIC}/links", headers={"Range": "bytes=100000-"}, timeout=10
    )
    assert response.status_code == 200
    assert response.json() == expected_links(proxy.url, upstream)


def test_range_of_head_answered_whole(proxy: ProxyProcess) -> None:
    response = requests.head(
        f"{proxy.url}{PUBLIC}/links", headers={"Range": "bytes=10-"}, timeout=10
    )
    assert response.status_code == 200
    assert "Content-Range" not in response.headers


def test_range_of_untranslated_body_relayed(
    proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    response = requests.get(
        f"{proxy.url}{PUBLIC}/links?type=text/plain", headers={"Range": "bytes=10-"}, timeout=10
    )
    assert response.status_code == 206
    assert response.content == links_document(upstream.origin)[10:]


def test_partial_json_to_post_rejected(proxy: ProxyProcess) -> None:
    """A POST cannot be sent again without its body, so a partial JSON response to one is a 502."""
    response = requests.post(
        f"{proxy.url}{PUBLIC}/links", headers={"Range": "bytes=10-"}, data=b"x", timeout=10
    )
    assert response.status_code == 502
    assert "partial response" in response.json()["detail"]


def test_curl_resume_never_mixes_bytes(proxy: ProxyProcess, tmp_path: Path) -> None:
    """curl -C - on a translated document stops with an error rather than append upstream bytes."""
    url = f"{proxy.url}{PUBLIC}/links"
    whole = requests.get(url, timeout=10).content
    partial = tmp_path / "links.json"
    partial.write_bytes(whole[:40])
    result = subprocess.run(
        ["curl", "-sS", "-C", "-", "-o", str(partial), url],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 33, result.stderr
    assert partial.read_bytes() == whole[:40]


def test_link_header_translated(proxy: ProxyProcess) -> None:
    response = requests.get(f"{proxy.url}{PUBLIC}/links", timeout=10)
    assert response.headers["Link"] == f'<{proxy.url}{PUBLIC}/links?page=2>; rel="next"'


def test_accept_encoding_limited_to_decodable(proxy: ProxyProcess) -> None:
    response = requests.post(
        f"{proxy.url}{USER_CATALOGS}/alpha-ws/mirror",
        headers={"Accept-Encoding": "br, zstd, gzip;q=0.5"},
        timeout=10,
    )
    assert response.headers["X-Received-Accept-Encoding"] == "gzip;q=0.5"


def test_request_json_links_point_upstream(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    sent = {"inputs": {"item": f"{proxy.url}{PUBLIC}/items/1", "other": "https://example.org/x"}}
    response = requests.post(f"{proxy.url}{USER_CATALOGS}/alpha-ws/mirror", json=sent, timeout=10)
    received = json.loads(response.content)
    assert received["inputs"]["item"] == f"{upstream.origin}{PUBLIC}/items/1"
    assert received["inputs"]["other"] == "https://example.org/x"
    assert response.headers["X-Received-Content-Length"] == str(len(response.content))


def test_large_request_json_streamed_chunked(
    proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    link = f'"{proxy.url}{PUBLIC}/items/1"'
    count = BUFFERED_REQUEST_MAX // len(link) + 1000
    body = ("[" + ",".join([link] * count) + "]").encode()
    assert len(body) > BUFFERED_REQUEST_MAX
    response = requests.post(
        f"{proxy.url}{USER_CATALOGS}/alpha-ws/mirror",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    received = json.loads(response.content)
    assert len(received) == count
    assert set(received) == {f"{upstream.origin}{PUBLIC}/items/1"}
    assert response.headers["X-Received-Transfer-Encoding"] == "chunked"


def test_curl_json_upload_keeps_length(
    proxy: ProxyProcess, upstream: UpstreamServer, tmp_path: Path
) -> None:
    """A 2.6 MB GeoJSON upload with a Content-Length reaches the files host with one."""
    feature = {"type": "Feature", "geometry": None, "properties": {"pad": "p" * 200},
               "links": [{"rel": "self", "href": f"{proxy.url}/files-of/alpha-ws/files/a.json"}]}
    document = json.dumps({"type": "FeatureCollection", "features": [feature] * 8_000})
    assert len(document) > 2_600_000
    upload = tmp_path / "big.geojson"
    upload.write_text(document)
    result = subprocess.run(
        ["curl", "-sS", "-f", "-T", str(upload), "-H", "Content-Type: application/geo+json",
         f"{proxy.url}/files-of/alpha-ws/files/big.geojson"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    received = upstream.state.received[-1]
    stored, _ = upstream.state.files[("alpha-ws", "files/big.geojson")]
    assert received.headers["Content-Length"] == [str(len(stored))]
    assert "Transfer-Encoding" not in received.headers
    assert json.loads(stored)["features"][0]["links"][0]["href"].startswith(
        upstream.files_template.replace("{workspace}", "alpha-ws")
    )


def test_non_json_request_body_untouched(proxy: ProxyProcess) -> None:
    body = f"{proxy.url}{PUBLIC}/items/1".encode()
    response = requests.post(
        f"{proxy.url}{USER_CATALOGS}/alpha-ws/mirror",
        data=body,
        headers={"Content-Type": "text/plain"},
        timeout=10,
    )
    assert response.content == body


def test_gzip_request_body_untouched(proxy: ProxyProcess) -> None:
    document = json.dumps({"href": f"{proxy.url}/x"}).encode()
    response = requests.post(
        f"{proxy.url}{USER_CATALOGS}/alpha-ws/mirror",
        data=gzip.compress(document),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=10,
    )
    assert response.content == document


def test_rewriting_off_leaves_bodies(
    unrewritten_proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    response = requests.get(f"{unrewritten_proxy.url}{PUBLIC}/links", timeout=10)
    assert response.content == links_document(upstream.origin)
    assert response.headers["Link"] == f'<{upstream.origin}{PUBLIC}/links?page=2>; rel="next"'


def test_rewriting_off_still_translates_location(unrewritten_proxy: ProxyProcess) -> None:
    response = requests.get(
        f"{unrewritten_proxy.url}{PUBLIC}/redirect", allow_redirects=False, timeout=10
    )
    assert response.headers["Location"] == f"{unrewritten_proxy.url}{PUBLIC}/"


def test_rewriting_off_passes_accept_encoding(unrewritten_proxy: ProxyProcess) -> None:
    response = requests.post(
        f"{unrewritten_proxy.url}{USER_CATALOGS}/alpha-ws/mirror",
        headers={"Accept-Encoding": "br, gzip"},
        timeout=10,
    )
    assert response.headers["X-Received-Accept-Encoding"] == "br, gzip"


def test_large_json_keeps_memory_bounded(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    """40 MiB of JSON links through the rewriter raises the proxy's peak RSS by far less."""
    process = ProxyProcess(
        ["serve", "--listen", "127.0.0.1:0", "--upstream", upstream.origin,
         "--vault", str(vault_file)],
        env=isolated_env,
    ).wait_ready()
    try:
        requests.get(f"{process.url}{PUBLIC}/links", timeout=10)
        before = process.rss_peak_kib()
        size = 40 * 1024 * 1024
        translated = 0
        received = 0
        with requests.get(
            f"{process.url}{USER_CATALOGS}/alpha-ws/big-json?size={size}", stream=True, timeout=60
        ) as response:
            tail = b""
            for chunk in response.iter_content(256 * 1024):
                received += len(chunk)
                window = tail + chunk
                translated += window.count(process.url.encode()) - tail.count(process.url.encode())
                tail = window[-64:]
        growth_mib = (process.rss_peak_kib() - before) / 1024
    finally:
        process.stop()
    assert received > size
    assert translated > 200_000
    assert growth_mib < 24, f"peak RSS grew by {growth_mib:.1f} MiB"
