"""Header filtering on its own: which headers cross the proxy in each direction."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.headers import client_response_headers, upstream_request_headers

BEARER = "Bearer vault-token"


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def names_sent_up(*pairs: tuple[str, str]) -> list[str]:
    return [name.lower() for name in upstream_request_headers(headers(*pairs), BEARER)]


def names_sent_down(*pairs: tuple[str, str]) -> list[str]:
    return [name.lower() for name, _ in client_response_headers(headers(*pairs))]


HOP_BY_HOP = [
    ("Connection", "keep-alive"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Transfer-Encoding", "chunked"),
    ("Upgrade", "websocket"),
    ("Proxy-Connection", "keep-alive"),
    ("Proxy-Authenticate", "Basic"),
    ("Proxy-Authorization", "Basic eDp5"),
    ("Proxy-Anything", "x"),
]


@pytest.mark.parametrize(("name", "value"), HOP_BY_HOP)
def test_hop_by_hop_dropped_upward(name: str, value: str) -> None:
    assert names_sent_up((name, value), ("Accept", "*/*")) == ["accept", "authorization"]


@pytest.mark.parametrize(("name", "value"), HOP_BY_HOP)
def test_hop_by_hop_dropped_downward(name: str, value: str) -> None:
    assert names_sent_down((name, value), ("Content-Type", "text/plain")) == ["content-type"]


@pytest.mark.parametrize(
    "name",
    ["Host", "Authorization", "Expect", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host",
     "X-Forwarded-Proto", "x-original-url", "X-Rewrite-URL", "Cookie2"],
)
def test_routing_and_identity_headers_dropped_upward(name: str) -> None:
    assert names_sent_up((name, "client value")) == ["authorization"]


def test_headers_named_by_connection_dropped() -> None:
    sent = names_sent_up(
        ("Connection", "X-Private , x-other"),
        ("connection", "X-Third"),
        ("X-Private", "1"),
        ("X-Other", "2"),
        ("X-Third", "3"),
        ("X-Kept", "4"),
    )

    assert sent == ["x-kept", "authorization"]


def test_headers_named_by_connection_dropped_downward() -> None:
    received = names_sent_down(("Connection", "X-Hop"), ("X-Hop", "1"), ("X-Kept", "2"))

    assert received == ["x-kept"]


def test_vault_authorization_replaces_client_ones() -> None:
    sent = upstream_request_headers(
        headers(("Authorization", "Bearer client"), ("authorization", "Basic eDp5")), BEARER
    )

    assert sent.getall("Authorization") == [BEARER]


def test_vault_authorization_set_last() -> None:
    sent = upstream_request_headers(headers(("Accept", "*/*"), ("X-Kept", "1")), BEARER)

    assert list(sent.keys())[-1] == "Authorization"


def test_no_token_means_no_authorization() -> None:
    sent = upstream_request_headers(headers(("Authorization", "Bearer client")), None)

    assert "Authorization" not in sent


def test_end_to_end_headers_kept_in_order_with_duplicates() -> None:
    sent = upstream_request_headers(
        headers(
            ("User-Agent", "legacy/1.0"),
            ("X-Kept", "one"),
            ("Accept", "text/csv"),
            ("X-Kept", "two"),
            ("Content-Length", "12"),
            ("Content-Type", "application/json"),
        ),
        BEARER,
    )

    assert list(sent.items()) == [
        ("User-Agent", "legacy/1.0"),
        ("X-Kept", "one"),
        ("Accept", "text/csv"),
        ("X-Kept", "two"),
        ("Content-Length", "12"),
        ("Content-Type", "application/json"),
        ("Authorization", BEARER),
    ]


@pytest.mark.parametrize(
    "name",
    ["Access-Control-Allow-Origin", "Access-Control-Allow-Credentials",
     "Access-Control-Allow-Headers", "Access-Control-Allow-Methods",
     "Access-Control-Expose-Headers", "Access-Control-Max-Age"],
)
def test_upstream_cors_headers_dropped(name: str) -> None:
    assert names_sent_down((name, "*"), ("X-Kept", "1")) == ["x-kept"]


def test_response_headers_kept_with_duplicates() -> None:
    received = list(
        client_response_headers(
            headers(
                ("Set-Cookie", "a=1"),
                ("Content-Encoding", "gzip"),
                ("Set-Cookie", "b=2"),
                ("Location", "https://objects.example/k"),
                ("Content-Length", "20"),
            )
        )
    )

    assert received == [
        ("Set-Cookie", "a=1"),
        ("Content-Encoding", "gzip"),
        ("Set-Cookie", "b=2"),
        ("Location", "https://objects.example/k"),
        ("Content-Length", "20"),
    ]
