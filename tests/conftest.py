"""Shared fixtures: an isolated environment, real databases, the sandbox over real HTTP, a CLI runner.

PostgreSQL: tests read EMSYNC_TEST_POSTGRES_URL (default: the local server at
127.0.0.1:5432 as user postgres). When none answers, they try to start the
local cluster; if that fails they skip with a clear reason, except under CI
(CI=true), where a missing PostgreSQL fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from emsync.config import SETTING_NAMES
from emsync.http import HttpClient

TEST_KEY = "q0Rk8b3bH7dJ0wH1lJtV0s5oYqk2m6mM8oQhZ1c9XyE="
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- environment


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the developer's settings, home or working directory; no test really sleeps."""
    for name in (*SETTING_NAMES, "EMSYNC_ENV_FILE"):
        monkeypatch.delenv(name, raising=False)
    # Tests re-run sync-all on purpose; the freshness rule has tests of its own (tests/test_leases.py).
    monkeypatch.setenv("EMSYNC_MIN_INTERVAL_MINUTES", "0")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    waits: list[float] = []
    monkeypatch.setattr(HttpClient, "sleep", staticmethod(waits.append))
    return waits


@pytest.fixture
def waits(isolated):
    """The waits emsync asked for (seconds), instead of sleeping them."""
    return isolated


# ---------------------------------------------------------------- databases


def _pg_admin_url() -> str:
    return os.environ.get("EMSYNC_TEST_POSTGRES_URL") or DEFAULT_PG


def _pg_reachable(url: str) -> str | None:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return str(exc).splitlines()[0]


def _try_start_local_cluster() -> None:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if versions and shutil.which("pg_ctlcluster"):
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def pg_server():
    url = _pg_admin_url()
    problem = _pg_reachable(url)
    if problem and "EMSYNC_TEST_POSTGRES_URL" not in os.environ:
        _try_start_local_cluster()
        problem = _pg_reachable(url)
    if problem:
        message = f"PostgreSQL not reachable at {url} ({problem}); set EMSYNC_TEST_POSTGRES_URL"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from sqlalchemy import create_engine, text

    from emsync import db

    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    template = f"emsync_tmpl_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{template}"'))
    template_url = _with_db(url, template)
    engine = db.make_engine(template_url)
    db.upgrade(engine, template_url)
    engine.dispose()
    yield admin, url, template
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))
    admin.dispose()


def _with_db(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _new_pg_database(pg_server, *, migrated: bool) -> tuple[str, callable]:
    from sqlalchemy import text

    admin, url, template = pg_server
    name = f"emsync_t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if migrated else "")))

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return _with_db(url, name), drop


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    return request.param


@pytest.fixture
def empty_db_url(backend, tmp_path, request):
    """A database without the emsync schema (what `emsync init` starts from)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'emsync.db'}"
    url, drop = _new_pg_database(request.getfixturevalue("pg_server"), migrated=False)
    request.addfinalizer(drop)
    return url


@pytest.fixture
def db_url(backend, tmp_path, request, monkeypatch):
    """A migrated database, configured for emsync through the environment."""
    if backend == "sqlite":
        from emsync import db

        url = f"sqlite:///{tmp_path / 'emsync.db'}"
        engine = db.make_engine(url, create=True)
        db.upgrade(engine, url)
        engine.dispose()
    else:
        url, drop = _new_pg_database(request.getfixturevalue("pg_server"), migrated=True)
        request.addfinalizer(drop)
    monkeypatch.setenv("EMSYNC_DATABASE_URL", url)
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    return url


@pytest.fixture
def sqlite_url(tmp_path, monkeypatch):
    """A migrated SQLite database only (for tests about SQLite files themselves)."""
    from emsync import db

    url = f"sqlite:///{tmp_path / 'emsync.db'}"
    engine = db.make_engine(url, create=True)
    db.upgrade(engine, url)
    engine.dispose()
    monkeypatch.setenv("EMSYNC_DATABASE_URL", url)
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    return url


@pytest.fixture
def sq_engine(sqlite_url):
    """An engine on the SQLite database only, for tests that need not run on both backends."""
    from emsync import db

    engine = db.make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def any_db(request):
    """A migrated database: both backends where the test asks for ``engine``/``db_url``, else SQLite only."""
    if {"engine", "db_url"} & set(request.fixturenames):
        return request.getfixturevalue("db_url")
    return request.getfixturevalue("sqlite_url")


@pytest.fixture
def engine(db_url):
    from emsync import db

    eng = db.make_engine(db_url)
    yield eng
    eng.dispose()


# ---------------------------------------------------------------- the CLI


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def cli(capsys):
    """Run `emsync ARGS...` in-process, as the console script does; returns Result(code, out, err)."""
    from emsync.cli import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def spawn(tmp_path):
    """Start `python -m emsync ARGS...` as a separate process with the current environment plus ``env``."""

    def start(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
        full_env = {**os.environ, **(env or {})}
        return subprocess.Popen(
            [sys.executable, "-m", "emsync", *args], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
        )

    return start


# ---------------------------------------------------------------- the sandbox


@pytest.fixture
def make_sandbox(monkeypatch, request):
    """Start a sandbox with a scenario and point emsync's settings at it."""
    from emsync.sandbox import Sandbox

    def make(scenario: dict | None = None, **kwargs) -> Sandbox:
        sb = Sandbox(scenario, **kwargs).start()
        request.addfinalizer(sb.stop)
        for name, value in sb.env().items():
            monkeypatch.setenv(name, value)
        return sb

    return make


@pytest.fixture
def sandbox(make_sandbox):
    return make_sandbox()


def add_integration(cli, platform: str, email: str, account: str, token: str, *extra) -> int:
    """Add (creating the user when needed) and return the new integration's id."""
    if cli("users", "list", "--json").out.find(f'"{email}"') < 0:
        assert cli("users", "add", email).code == 0
    token_option = "--access-token" if platform == "meta" else "--refresh-token"
    result = cli("integrations", "add", "--email", email, "--platform", platform, "--account-id", account, token_option, token, *extra)
    assert result.code == 0, result.err
    return int(result.out.split("integration ")[1].split()[0])


def add_meta(cli, email="anna@example.com", account="act_123", token="EAABtoken-anna-123", *extra):
    return add_integration(cli, "meta", email, account, token, *extra)


def add_google(cli, email="anna@example.com", account="123-456-7890", token="1//refresh-anna-123", *extra):
    return add_integration(cli, "google", email, account, token, *extra)
