"""Counters for `/_proxy/metrics`, kept as plain numbers in dicts and rendered on request.

Updating them costs a few dict operations per request and needs no lock,
because the proxy runs one event loop per process. Label values come from
fixed sets, or from workspace names in the vault (never from the raw path), so
the number of series stays bounded.

Each process keeps its own counters. `Metrics(labels={"worker": "2"})` adds
constant labels to every sample, so that several worker processes can be
distinguished (or their text joined) by the scraper.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from proxy import __version__
from proxy.vault import Vault

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NO_WORKSPACE = "-"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "reset", "tls", "protocol")
# Upper bounds in seconds, from a quick cached response to a long download.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0
)


@dataclass
class ReloadCounts:
    """Reloads since start by file ("vault" or "config"), counted by the reloader."""

    succeeded: dict[str, int] = field(default_factory=lambda: {"vault": 0, "config": 0})
    failed: dict[str, int] = field(default_factory=lambda: {"vault": 0, "config": 0})


class Metrics:
    """The counters of one proxy process."""

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        self.labels = dict(labels or {})
        self.requests: dict[tuple[str, str, str], int] = {}
        """Requests by (workspace, method, status class)."""
        self.duration_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.request_bytes: dict[str, int] = {}
        """Request body bytes received from clients, by workspace."""
        self.response_bytes: dict[str, int] = {}
        """Response body bytes sent to clients, by workspace."""
        self.upstream_errors = dict.fromkeys(UPSTREAM_ERROR_KINDS, 0)
        self.token_rejections: dict[tuple[str, str], int] = {}
        """Upstream 401 and 403 responses to requests with a vault token, by (workspace, status)."""
        self.in_flight = 0

    def observe_request(
        self,
        workspace: str,
        method: str,
        status: int,
        seconds: float,
        received: int,
        sent: int,
    ) -> None:
        """Count one finished request; `workspace` must be a vault name or `NO_WORKSPACE`."""
        if method not in METHODS:
            method = OTHER_METHOD
        key = (workspace, method, f"{status // 100}xx")
        self.requests[key] = self.requests.get(key, 0) + 1
        self.duration_counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds
        self.request_bytes[workspace] = self.request_bytes.get(workspace, 0) + received
        self.response_bytes[workspace] = self.response_bytes.get(workspace, 0) + sent

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors[kind] = self.upstream_errors.get(kind, 0) + 1

    def token_rejected(self, workspace: str, status: int) -> None:
        key = (workspace, str(status))
        self.token_rejections[key] = self.token_rejections.get(key, 0) + 1

    def render(self, vault: Vault, reloads: ReloadCounts, now: dt.datetime) -> str:
        """Return every metric in the Prometheus text exposition format, version 0.0.4."""
        text = _Text(self.labels)
        text.family("eodh_proxy_build_info", "gauge", "Version of the running proxy.")
        text.sample("eodh_proxy_build_info", {"version": __version__}, 1)

        text.family("eodh_proxy_requests_total", "counter",
                    "Requests handled, by workspace, method and status class.")
        for (workspace, method, status_class), count in sorted(self.requests.items()):
            labels = {"workspace": workspace, "method": method, "status_class": status_class}
            text.sample("eodh_proxy_requests_total", labels, count)

        self._render_duration(text)
        self._render_bytes(text)

        text.family("eodh_proxy_requests_in_flight", "gauge", "Requests being handled now.")
        text.sample("eodh_proxy_requests_in_flight", {}, self.in_flight)

        text.family("eodh_proxy_upstream_errors_total", "counter",
                    "Failed exchanges with the upstream, by kind.")
        for kind, count in sorted(self.upstream_errors.items()):
            text.sample("eodh_proxy_upstream_errors_total", {"kind": kind}, count)

        text.family("eodh_proxy_token_rejections_total", "counter",
                    "Upstream 401 and 403 responses to requests carrying a vault token.")
        for (workspace, status), count in sorted(self.token_rejections.items()):
            text.sample("eodh_proxy_token_rejections_total",
                        {"workspace": workspace, "status": status}, count)

        self._render_vault(text, vault, now)
        self._render_reloads(text, reloads)
        return text.output()

    def _render_duration(self, text: _Text) -> None:
        name = "eodh_proxy_request_duration_seconds"
        text.family(name, "histogram", "Time from request to the end of the response.")
        cumulative = 0
        for bound, count in zip(DURATION_BUCKETS, self.duration_counts, strict=False):
            cumulative += count
            text.sample(name + "_bucket", {"le": _number(bound)}, cumulative)
        total = cumulative + self.duration_counts[-1]
        text.sample(name + "_bucket", {"le": "+Inf"}, total)
        text.sample(name + "_sum", {}, self.duration_sum)
        text.sample(name + "_count", {}, total)

    def _render_bytes(self, text: _Text) -> None:
        for name, help_text, counts in (
            ("eodh_proxy_request_bytes_total", "Request body bytes received from clients.",
             self.request_bytes),
            ("eodh_proxy_response_bytes_total", "Response body bytes sent to clients.",
             self.response_bytes),
        ):
            text.family(name, "counter", help_text)
            for workspace, count in sorted(counts.items()):
                text.sample(name, {"workspace": workspace}, count)

    @staticmethod
    def _render_vault(text: _Text, vault: Vault, now: dt.datetime) -> None:
        text.family("eodh_proxy_vault_workspaces", "gauge", "Workspaces in the vault in use.")
        text.sample("eodh_proxy_vault_workspaces", {}, len(vault.credentials))
        name = "eodh_proxy_token_expiry_seconds"
        text.family(name, "gauge",
                    "Seconds until each token's recorded expiry; negative once past. "
                    "Tokens without an expiry are not listed.")
        for workspace in vault.workspaces:
            expires = vault.credentials[workspace].expires
            if expires is not None:
                text.sample(name, {"workspace": workspace}, (expires - now).total_seconds())

    @staticmethod
    def _render_reloads(text: _Text, reloads: ReloadCounts) -> None:
        for name, help_text, counts in (
            ("eodh_proxy_reloads_total", "Successful reloads of the vault or config file.",
             reloads.succeeded),
            ("eodh_proxy_reload_failures_total",
             "Reloads rejected because the file did not parse or validate.", reloads.failed),
        ):
            text.family(name, "counter", help_text)
            for file, count in sorted(counts.items()):
                text.sample(name, {"file": file}, count)


class _Text:
    """Lines of the text format, with the constant labels added to every sample."""

    def __init__(self, constant: Mapping[str, str]) -> None:
        self._constant = dict(constant)
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Mapping[str, str], value: float) -> None:
        pairs = _label_text({**labels, **self._constant}.items())
        self._lines.append(f"{name}{pairs} {_number(value)}")

    def output(self) -> str:
        return "\n".join(self._lines) + "\n"


def _label_text(pairs: Iterable[tuple[str, str]]) -> str:
    items = [f'{name}="{_escape(value)}"' for name, value in pairs]
    return "{" + ",".join(items) + "}" if items else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))
