"""The metrics text: counters, histogram, constant labels, escaping."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import MappingProxyType

from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics, ReloadCounts
from proxy.vault import Credential, Token, Vault

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def empty_vault() -> Vault:
    return Vault(Path("vault.yaml"), MappingProxyType({}))


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def test_histogram_buckets_cumulative() -> None:
    metrics = Metrics()
    for seconds in (0.001, 0.2, 0.2, 7.0, 1000.0):
        metrics.observe_request("-", "GET", 200, seconds, 0, 0)
    parsed = samples(metrics.render(empty_vault(), ReloadCounts(), NOW))
    buckets = {labels["le"]: value for name, labels, value in parsed
               if name == "eodh_proxy_request_duration_seconds_bucket"}
    assert buckets["0.005"] == 1
    assert buckets["0.25"] == 3
    assert buckets["10"] == 4
    assert buckets["300"] == 4
    assert buckets["+Inf"] == 5


def test_constant_labels_on_every_sample() -> None:
    metrics = Metrics(labels={"worker": "2"})
    metrics.observe_request("a-ws", "GET", 200, 0.1, 1, 2)
    parsed = samples(metrics.render(empty_vault(), ReloadCounts(), NOW))
    assert parsed
    assert all(labels.get("worker") == "2" for _, labels, _ in parsed)


def test_label_values_escaped() -> None:
    metrics = Metrics(labels={"worker": 'a"b\\c\nd'})
    parsed = samples(metrics.render(empty_vault(), ReloadCounts(), NOW))
    assert parsed[0][1]["worker"] == 'a"b\\c\nd'


def test_token_expiry_gauge_in_seconds() -> None:
    vault = Vault(
        Path("vault.yaml"),
        MappingProxyType({
            "a-ws": Credential("a-ws", Token("t1"), NOW + dt.timedelta(hours=1)),
            "b-ws": Credential("b-ws", Token("t2"), None),
        }),
    )
    parsed = samples(Metrics().render(vault, ReloadCounts(), NOW))
    expiry = [(labels, value) for name, labels, value in parsed
              if name == "eodh_proxy_token_expiry_seconds"]
    assert expiry == [({"workspace": "a-ws"}, 3600.0)]


def test_unknown_method_counted_as_other() -> None:
    metrics = Metrics()
    metrics.observe_request("-", "BREW", 418, 0.1, 0, 0)
    assert metrics.requests == {("-", "OTHER", "4xx"): 1}
