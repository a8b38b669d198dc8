"""The shared HTTP session, over real sockets to the sandbox: what the environment says about proxies is read once
per host and still obeyed."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest
import requests

from emsync.errors import RetryableError
from emsync.http import HttpClient, new_session


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_proxy_settings_are_obeyed_per_host_on_every_request(sandbox, monkeypatch):
    dead = f"http://127.0.0.1:{_closed_port()}"  # a proxy nobody listens on
    for name, value in (("http_proxy", dead), ("no_proxy", "127.0.0.1")):
        monkeypatch.setenv(name, value)
        monkeypatch.setenv(name.upper(), value)
    session = new_session(2)
    port = urlsplit(sandbox.url).port
    for _ in range(2):  # the second request uses what the first learnt from the environment
        direct = session.get(f"http://127.0.0.1:{port}/__sandbox/requests", timeout=5)
        assert direct.status_code == 200, "NO_PROXY names 127.0.0.1: straight to the sandbox"
    for _ in range(2):
        with pytest.raises(requests.exceptions.ProxyError):
            session.get(f"http://localhost:{port}/__sandbox/requests", timeout=5)  # not in NO_PROXY: via the proxy
    session.close()


def test_a_callers_own_proxies_win_over_the_environment(sandbox, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    session = new_session(2)
    url = f"{sandbox.url}/__sandbox/requests"
    assert session.get(url, timeout=5).status_code == 200
    with pytest.raises(requests.exceptions.ProxyError):
        session.get(url, timeout=5, proxies={"http": f"http://127.0.0.1:{_closed_port()}"})
    session.close()


def test_a_dead_proxy_is_named_as_the_proxy_not_as_the_api(sandbox, monkeypatch):
    dead = f"http://127.0.0.1:{_closed_port()}"
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    api = HttpClient(new_session(2), timeout=5, attempts=1, max_wait=0)
    with pytest.raises(RetryableError) as failure:
        api.send("GET", f"{sandbox.url}/__sandbox/requests", classify=lambda response: response.json())
    message = str(failure.value)
    assert "proxy" in message and "HTTP_PROXY" in message and "NO_PROXY" in message, message
