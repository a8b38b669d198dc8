"""`emsync serve` on a real loopback port: every endpoint, authentication, overlap, and the same rows as the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
import uvicorn

from emsync import db, server
from emsync.config import load_settings

from .conftest import add_google, add_meta
from .helpers import stored

SECRET = "s3cret-" + "x" * 40
pytestmark = pytest.mark.usefixtures("any_db")


@pytest.fixture
def serve(monkeypatch):
    """Start the app under uvicorn on a free loopback port, with the current environment's settings."""
    started = []

    def start():
        monkeypatch.setenv("CRON_SECRET", SECRET)
        settings = load_settings()
        engine = db.make_engine(settings.database_url)
        app = server.create_app(settings, engine)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, log_level="warning")
        instance = uvicorn.Server(config)
        thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not instance.started and time.monotonic() < deadline:
            time.sleep(0.02)
        started.append((instance, thread, engine))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for instance, thread, engine in started:
        instance.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


AUTH = {"Authorization": f"Bearer {SECRET}"}


def _wait_run(url: str, run_id: int) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        detail = requests.get(f"{url}/api/runs/{run_id}", headers=AUTH, timeout=5).json()
        if detail["status"] != "running":
            return detail
        time.sleep(0.05)
    raise AssertionError("run did not finish")


def test_healthz_needs_no_auth(serve):
    url = serve()
    assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}


@pytest.mark.parametrize(
    "method, path", [("POST", "/api/cron/sync-all"), ("POST", "/api/sync/user"), ("GET", "/api/status"), ("GET", "/api/runs/1")]
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-secret"},
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": SECRET},
        {"Authorization": f"Bearer {SECRET}x"},
    ],
)
def test_every_endpoint_requires_the_bearer_secret(serve, method, path, headers):
    url = serve()
    response = requests.request(method, f"{url}{path}", headers=headers, json={"email": "a@example.com"}, timeout=5)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"} and response.headers["WWW-Authenticate"] == "Bearer"
    assert SECRET not in response.text


def test_the_secret_is_compared_in_constant_time(serve, monkeypatch):
    calls = []
    real = server.hmac.compare_digest
    monkeypatch.setattr(server.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    url = serve()
    requests.get(f"{url}/api/status", headers={"Authorization": "Bearer nope"}, timeout=5)
    requests.get(f"{url}/api/status", headers=AUTH, timeout=5)
    assert [a for a, _ in calls] == [b"nope", SECRET.encode()]


def test_repeated_failures_from_one_address_are_slowed_down(serve, monkeypatch):
    penalties = []

    async def record(seconds):
        penalties.append(seconds)

    monkeypatch.setattr(server.AuthGuard, "penalty_sleep", staticmethod(record))
    url = serve()
    for _ in range(8):
        assert requests.get(f"{url}/api/status", headers={"Authorization": "Bearer bad"}, timeout=5).status_code == 401
    assert penalties == [1.0, 2.0, 3.0]
    assert requests.get(f"{url}/api/status", headers=AUTH, timeout=5).status_code == 200


def test_sync_all_over_http_writes_the_same_rows_as_the_cli(serve, cli, make_sandbox, tmp_path, monkeypatch):
    make_sandbox({"restate": False})
    meta = add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    url = serve()
    # the seed's curl, unchanged but for host and secret
    curl = requests.post(f"{url}/api/cron/sync-all", headers={**AUTH, "Content-Type": "application/json"}, timeout=5)
    assert curl.status_code == 202
    run_id = curl.json()["run_id"]
    detail = _wait_run(url, run_id)
    assert (detail["status"], detail["trigger"], detail["succeeded"], len(detail["attempts"])) == ("ok", "server", 2, 2)
    engine = db.make_engine(os.environ["EMSYNC_DATABASE_URL"])
    over_http = {i: {k: tuple(r) for k, r in stored(engine, i).items()} for i in (meta, google)}
    engine.dispose()
    # the same integrations synced by the CLI into a second database
    second = f"sqlite:///{tmp_path / 'cli.db'}"
    cli_engine = db.make_engine(second, create=True)
    db.upgrade(cli_engine, second)
    monkeypatch.setenv("EMSYNC_DATABASE_URL", second)
    add_meta(cli, account="act_1")
    add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0
    by_cli = {i: {k: tuple(r) for k, r in stored(cli_engine, i).items()} for i in (meta, google)}
    cli_engine.dispose()
    assert over_http == by_cli and all(over_http.values())


def test_a_second_sync_all_while_one_runs_is_409(serve, cli, make_sandbox):
    sb = make_sandbox()
    add_meta(cli, account="act_1")
    url = serve()
    sb.hold()
    try:
        first = requests.post(f"{url}/api/cron/sync-all", headers=AUTH, timeout=5)
        assert first.status_code == 202
        second = requests.post(f"{url}/api/cron/sync-all", headers=AUTH, timeout=5)
        assert second.status_code == 409 and second.json()["run_id"] == first.json()["run_id"]
    finally:
        sb.release()
    _wait_run(url, first.json()["run_id"])
    assert requests.post(f"{url}/api/cron/sync-all", headers=AUTH, timeout=5).status_code == 202


def test_sync_user_endpoint(serve, cli, make_sandbox):
    sb = make_sandbox()
    add_meta(cli, "anna@example.com", "act_1")
    add_meta(cli, "bob@example.com", "act_2", "EAABbob-token")
    url = serve()
    started = requests.post(f"{url}/api/sync/user", headers=AUTH, json={"email": "Anna@Example.com"}, timeout=5)
    assert started.status_code == 202
    detail = _wait_run(url, started.json()["run_id"])
    assert (detail["trigger"], detail["scope"], detail["succeeded"]) == ("user", "user anna@example.com", 1)
    assert sb.count("meta.insights", "1") == 1 and sb.count("meta.insights", "2") == 0
    assert requests.post(f"{url}/api/sync/user", headers=AUTH, json={"email": "ghost@example.com"}, timeout=5).status_code == 404
    for body in ({}, {"email": 5}, {"email": "not-an-email"}, ["anna@example.com"]):
        assert requests.post(f"{url}/api/sync/user", headers=AUTH, json=body, timeout=5).status_code == 422, body
    assert (
        requests.post(f"{url}/api/sync/user", headers={**AUTH, "Content-Type": "application/json"}, data="{oops", timeout=5).status_code
        == 422
    )


def test_status_is_the_same_json_as_the_cli(serve, cli, make_sandbox):
    make_sandbox()
    add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    url = serve()
    over_http = requests.get(f"{url}/api/status", headers=AUTH, timeout=5).json()
    by_cli = json.loads(cli("status", "--json").out)
    for report in (over_http, by_cli):
        report.pop("generated_at")
    assert over_http == by_cli
    assert requests.get(f"{url}/api/runs/999", headers=AUTH, timeout=5).status_code == 404
    assert requests.get(f"{url}/api/runs/abc", headers=AUTH, timeout=5).status_code == 404


@pytest.mark.parametrize("secret, words", [(None, "CRON_SECRET is not set"), ("short-secret", "shorter than 32")])
def test_serve_refuses_a_missing_or_short_secret(cli, monkeypatch, secret, words):
    if secret:
        monkeypatch.setenv("CRON_SECRET", secret)
    result = cli("serve", "--port", "8799")
    assert result.code == 2 and words in result.err and "emsync secret" in result.err


def test_secret_command_prints_a_long_random_secret(cli):
    first, second = cli("secret").out.strip(), cli("secret").out.strip()
    assert len(first) >= 32 and first != second


def test_serve_command_starts_and_answers(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("CRON_SECRET", SECRET)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "emsync", "serve", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/api/status", headers=AUTH, timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
                time.sleep(0.1)
        assert response.status_code == 200 and "integrations" in response.json()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert SECRET not in err
