"""A request kept in flight: the upstream holds it at a gate until the test opens it."""

from __future__ import annotations

import threading

import requests

from proxy.standin import USER_CATALOGS
from tests.upstream import UpstreamServer


class InFlight:
    """GET `.../<workspace>/hold?gate=<name>` through the proxy, from a thread.

    `start` returns once the upstream holds the request (with `after="headers"`,
    once the response headers and first bytes are out); `finish` opens the gate
    and returns the response, or raises what the client raised.
    """

    def __init__(
        self, proxy_url: str, upstream: UpstreamServer, workspace: str, name: str,
        after: str = "",
    ) -> None:
        self._gate = upstream.gate(name)
        query = f"gate={name}" + (f"&after={after}" if after else "")
        self._url = f"{proxy_url}{USER_CATALOGS}/{workspace}/hold?{query}"
        self._response: requests.Response | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._response = requests.get(self._url, timeout=30)
            self._response.content  # noqa: B018 - read the whole body here, in the thread
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            self._error = error

    def start(self, timeout: float = 10) -> InFlight:
        self._thread.start()
        assert self._gate.arrived.wait(timeout), "the held request never reached the upstream"
        return self

    def finish(self, timeout: float = 30) -> requests.Response:
        self._gate.open()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the held request did not finish"
        if self._error is not None:
            raise self._error
        assert self._response is not None
        return self._response
