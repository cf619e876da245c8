"""The link rewriter: whole-origin matching, chunk boundaries, escaped slashes, codings."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from proxy.rewrite import (
    BodyDecoder,
    DecodeError,
    LinkRewriter,
    Translation,
    accept_decodable,
    compile_rules,
    content_coding,
    is_json_media_type,
    rewrite_text,
    translate_link,
    translate_location,
)

UPSTREAM = "https://staging.eodatahub.org.uk"
CLIENT = "http://localhost:8080"
FILES = "https://{workspace}.staging.eodatahub-workspaces.org.uk"

TO_CLIENT = compile_rules(
    (
        Translation(FILES, CLIENT + "/files-of/{workspace}"),
        Translation(UPSTREAM, CLIENT),
    )
)
TO_UPSTREAM = compile_rules(
    (
        Translation(CLIENT + "/files-of/{workspace}", FILES),
        Translation(CLIENT, UPSTREAM),
    )
)

SAMPLE = json.dumps(
    {
        "links": [
            {"rel": "self", "href": f"{UPSTREAM}/api/catalogue/stac/catalogs/user/catalogs/a-ws"},
            {"rel": "next", "href": f"{UPSTREAM}/api/x/jobs?limit=10&skip=10"},
            {"rel": "item", "href": "https://my-ws.staging.eodatahub-workspaces.org.uk/files/b/k.json"},
            {"rel": "other", "href": "https://objects.example.org/bucket/key"},
        ],
        "root": UPSTREAM,
    }
).encode()
EXPECTED = (
    SAMPLE.replace(UPSTREAM.encode(), CLIENT.encode()).replace(
        b"https://my-ws.staging.eodatahub-workspaces.org.uk", CLIENT.encode() + b"/files-of/my-ws"
    )
)


def rewrite_in_chunks(data: bytes, sizes: list[int], rules=TO_CLIENT) -> bytes:
    rewriter = LinkRewriter(rules)
    output = []
    position = 0
    for size in sizes:
        output.append(rewriter.feed(data[position : position + size]))
        position += size
    output.append(rewriter.feed(data[position:]))
    output.append(rewriter.finish())
    return b"".join(output)


def test_whole_body_rewritten() -> None:
    assert rewrite_in_chunks(SAMPLE, []) == EXPECTED


def test_every_split_point_rewritten() -> None:
    for split in range(len(SAMPLE) + 1):
        assert rewrite_in_chunks(SAMPLE, [split]) == EXPECTED, split


def test_every_two_split_points_around_url() -> None:
    start = SAMPLE.index(UPSTREAM.encode())
    for first in range(start - 2, start + len(UPSTREAM) + 3):
        for second in range(1, len(UPSTREAM) + 3):
            assert rewrite_in_chunks(SAMPLE, [first, second]) == EXPECTED, (first, second)


def test_scheme_context_kept_across_chunks() -> None:
    body = b'"' + b"a" * 300 + b'xhttps://staging.eodatahub.org.uk/no' + b"b" * 300 + b'"'
    for split in range(len(body) + 1):
        assert rewrite_in_chunks(body, [split]) == body, split


def test_byte_at_a_time_rewritten() -> None:
    assert rewrite_in_chunks(SAMPLE, [1] * len(SAMPLE)) == EXPECTED


def test_escaped_slashes_rewritten_escaped() -> None:
    escaped = SAMPLE.replace(b"/", b"\\/")
    expected = EXPECTED.replace(b"/", b"\\/")
    for split in range(len(escaped) + 1):
        assert rewrite_in_chunks(escaped, [split]) == expected, split


def test_escaped_body_still_valid_json() -> None:
    escaped = SAMPLE.replace(b"/", b"\\/")
    assert json.loads(rewrite_in_chunks(escaped, [])) == json.loads(EXPECTED)


@pytest.mark.parametrize(
    "text",
    [
        "https://staging.eodatahub.org.uk:4430/x",
        "https://staging.eodatahub.org.uk.evil.example/x",
        "https://staging.eodatahub.org.uk@evil.example/x",
        "https://staging.eodatahub.org.ukx/x",
        "https://staging.eodatahub.org.uk-x/x",
        "https://staging.eodatahub.org.uk,x/x",
        "http://staging.eodatahub.org.uk/x",
        "xhttps://staging.eodatahub.org.uk/x",
        "a+https://staging.eodatahub.org.uk/x",
        "HTTPS://staging.eodatahub.org.uk/x",
        "https://user@staging.eodatahub.org.uk/x",
        "https://staging.eodatahub.org.uk\\u002eevil.example/x",
        "https://-bad.staging.eodatahub-workspaces.org.uk/x",
        "https://a.b.staging.eodatahub-workspaces.org.uk/x",
    ],
)
def test_other_origins_untouched(text: str) -> None:
    assert rewrite_text(text, TO_CLIENT) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (UPSTREAM, CLIENT),
        (UPSTREAM + "/", CLIENT + "/"),
        (UPSTREAM + "?q=1", CLIENT + "?q=1"),
        (UPSTREAM + "#top", CLIENT + "#top"),
        (UPSTREAM + ":443/x", CLIENT + "/x"),
        ("https://Staging.EODataHub.org.uk/Case", CLIENT + "/Case"),
        (f"<{UPSTREAM}/x>; rel=next", f"<{CLIENT}/x>; rel=next"),
        (f'"{UPSTREAM}\\u002fx"', f'"{CLIENT}\\u002fx"'),
        (f"{UPSTREAM} and {UPSTREAM}/y", f"{CLIENT} and {CLIENT}/y"),
    ],
)
def test_whole_origin_rewritten(text: str, expected: str) -> None:
    assert rewrite_text(text, TO_CLIENT) == expected


def test_port_prefix_not_matched() -> None:
    rules = compile_rules((Translation("http://127.0.0.1:80", CLIENT),))
    assert rewrite_text("http://127.0.0.1:8080/x", rules) == "http://127.0.0.1:8080/x"
    assert rewrite_text("http://127.0.0.1:80/x", rules) == CLIENT + "/x"
    assert rewrite_text("http://127.0.0.1/x", rules) == CLIENT + "/x"


def test_path_prefix_matched_as_whole_segment() -> None:
    rules = compile_rules((Translation(CLIENT + "/as/a-ws", UPSTREAM),))
    assert rewrite_text(CLIENT + "/as/a-ws/x", rules) == UPSTREAM + "/x"
    assert rewrite_text(CLIENT + "/as/a-ws", rules) == UPSTREAM
    assert rewrite_text(CLIENT + "/as/a-ws2/x", rules) == CLIENT + "/as/a-ws2/x"


def test_placeholder_dropped_from_target() -> None:
    rules = compile_rules((Translation(CLIENT + "/as/{workspace}", UPSTREAM),))
    assert rewrite_text(CLIENT + "/as/b-ws/api/x", rules) == UPSTREAM + "/api/x"
    assert rewrite_text(CLIENT + "/as/b_ws/api/x", rules) == CLIENT + "/as/b_ws/api/x"


def test_request_direction_restores_upstream() -> None:
    body = rewrite_in_chunks(EXPECTED, [7], TO_UPSTREAM)
    assert body == SAMPLE


def test_workspace_in_path_template() -> None:
    rules = compile_rules((Translation("http://127.0.0.1:9000/{workspace}", CLIENT + "/files-of/{workspace}"),))
    assert rewrite_text("http://127.0.0.1:9000/b-ws/files/k", rules) == CLIENT + "/files-of/b-ws/files/k"
    assert rewrite_text("http://127.0.0.1:9000/b_ws/files/k", rules) == "http://127.0.0.1:9000/b_ws/files/k"


def test_workspace_host_label_lower_cased() -> None:
    link = "https://B-WS.staging.eodatahub-workspaces.org.uk/files/K"
    assert rewrite_text(link, TO_CLIENT) == CLIENT + "/files-of/b-ws/files/K"


def test_workspace_path_label_case_kept() -> None:
    files = Translation("http://127.0.0.1:9000/{workspace}", CLIENT + "/files-of/{workspace}")
    rules = compile_rules((files,))
    translated = rewrite_text("http://127.0.0.1:9000/B-ws/files/K", rules)
    assert translated == CLIENT + "/files-of/B-ws/files/K"


def test_non_matching_body_unchanged_and_streamed() -> None:
    body = b'{"a": "' + b"x" * 100_000 + b'"}'
    rewriter = LinkRewriter(TO_CLIENT)
    first = rewriter.feed(body[:50_000])
    assert len(first) >= 50_000 - TO_CLIENT.hold
    assert first + rewriter.feed(body[50_000:]) + rewriter.finish() == body


def test_held_back_bytes_bounded() -> None:
    rewriter = LinkRewriter(TO_CLIENT)
    body = SAMPLE * 200
    for position in range(0, len(body), 1000):
        rewriter.feed(body[position : position + 1000])
        assert rewriter.held_back <= TO_CLIENT.hold


def test_no_rules_passes_through() -> None:
    rewriter = LinkRewriter(compile_rules(()))
    assert rewriter.feed(SAMPLE) == SAMPLE
    assert rewriter.finish() == b""


def test_compiled_rules_are_cached() -> None:
    first = compile_rules((Translation(UPSTREAM, CLIENT),))
    second = compile_rules((Translation(UPSTREAM, CLIENT),))
    assert first is second


def test_relative_location_read_against_base() -> None:
    files = "https://b-ws.staging.eodatahub-workspaces.org.uk"
    assert translate_location("/api/x", TO_CLIENT, UPSTREAM) == CLIENT + "/api/x"
    assert translate_location("/files/k", TO_CLIENT, files) == CLIENT + "/files-of/b-ws/files/k"
    assert translate_location("//evil.example/x", TO_CLIENT, UPSTREAM) == "//evil.example/x"
    assert translate_location("/x", TO_CLIENT, "https://other.example") == "/x"
    assert translate_location(UPSTREAM + "/x", TO_CLIENT, "") == CLIENT + "/x"
    assert translate_location("/api/x", TO_CLIENT, "") == "/api/x"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('</api/x>; rel="next"', f'<{CLIENT}/api/x>; rel="next"'),
        (
            f'<{UPSTREAM}/a>; rel="self", </b>; rel="next"',
            f'<{CLIENT}/a>; rel="self", <{CLIENT}/b>; rel="next"',
        ),
        ('<page-2>; rel="next"', '<page-2>; rel="next"'),
        ('<//evil.example/x>; rel="next"', '<//evil.example/x>; rel="next"'),
        (f'</x>; rel="up"; anchor="{UPSTREAM}/y"', f'<{CLIENT}/x>; rel="up"; anchor="{CLIENT}/y"'),
    ],
)
def test_link_targets_read_against_base(value: str, expected: str) -> None:
    assert translate_link(value, TO_CLIENT, UPSTREAM) == expected


def test_relative_link_kept_without_base() -> None:
    assert translate_link('</api/x>; rel="next"', TO_CLIENT, "") == '</api/x>; rel="next"'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/GEO+JSON", True),
        ("application/problem+json", True),
        ("application/vnd.oai.openapi+json;version=3.0", True),
        ("application/octet-stream", False),
        ("text/html", False),
        ("application/jsonl", False),
        ("image/tiff", False),
        (None, False),
    ],
)
def test_json_media_types(value: str | None, expected: bool) -> None:
    assert is_json_media_type(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, ""), ("identity", ""), ("gzip", "gzip"), ("GZIP", "gzip"), ("deflate", "deflate"),
     ("br", None), ("gzip, br", None), ("gzip, gzip", None), ("zstd", None)],
)
def test_content_codings(value: str | None, expected: str | None) -> None:
    assert content_coding(value) == expected


def test_accept_encoding_keeps_decodable() -> None:
    assert accept_decodable("gzip, deflate, br, zstd") == "gzip, deflate"
    assert accept_decodable("br;q=1.0, gzip;q=0.5") == "gzip;q=0.5"
    assert accept_decodable("br") == "identity"
    assert accept_decodable("*") == "identity"
    assert accept_decodable(None) is None


def decode_in_chunks(coding: str, data: bytes, size: int) -> bytes:
    decoder = BodyDecoder(coding)
    output = []
    for position in range(0, len(data), size):
        output.extend(decoder.feed(data[position : position + size]))
    output.extend(decoder.finish())
    return b"".join(output)


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_gzip_decoded_in_chunks(size: int) -> None:
    assert decode_in_chunks("gzip", gzip.compress(SAMPLE), size) == SAMPLE


def test_gzip_members_concatenated() -> None:
    data = gzip.compress(b"first ") + gzip.compress(b"second")
    assert decode_in_chunks("gzip", data, 5) == b"first second"


def test_deflate_zlib_and_raw_decoded() -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_data = raw.compress(SAMPLE) + raw.flush()
    assert decode_in_chunks("deflate", zlib.compress(SAMPLE), 3) == SAMPLE
    assert decode_in_chunks("deflate", raw_data, 3) == SAMPLE


def test_truncated_gzip_raises() -> None:
    data = gzip.compress(SAMPLE * 10)
    with pytest.raises(DecodeError):
        decode_in_chunks("gzip", data[: len(data) // 2], 100)


def test_corrupt_gzip_raises() -> None:
    data = bytearray(gzip.compress(SAMPLE * 10))
    data[20:40] = b"\xff" * 20
    with pytest.raises(DecodeError):
        decode_in_chunks("gzip", bytes(data), 100)


def test_decoder_output_steps_bounded() -> None:
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))
    decoder = BodyDecoder("gzip")
    sizes = [len(piece) for piece in decoder.feed(bomb)]
    assert max(sizes) <= BodyDecoder.OUTPUT_STEP
    assert sum(sizes) + sum(len(p) for p in decoder.finish()) == 8 * 1024 * 1024
