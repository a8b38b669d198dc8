"""What the sandbox served, computed independently of emsync's parsers, to compare stored rows against."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import text

from emsync.sandbox.data import day_stats


def window(sb, platform: str, account: str, days: int) -> tuple[date, date]:
    today = sb.today(sb.account(platform, account)["timezone"])
    return today - timedelta(days=days - 1), today


def expected(sb, platform: str, account: str, days: int = 30, *, version: int = 0, purchase_source: str = "standard") -> dict:
    """(campaign_id, date) -> (spend, impressions, clicks, conversions, revenue) as the API returned them."""
    since, until = window(sb, platform, account, days)
    return expected_between(sb, platform, account, since, until, version=version, purchase_source=purchase_source)


def expected_between(
    sb, platform: str, account: str, since: date, until: date, *, version: int = 0, purchase_source: str = "standard"
) -> dict:
    """``expected`` for any dates (a backfill's range): what the sandbox serves for [since, until]."""
    cfg = sb.account(platform, account)
    today = sb.today(cfg["timezone"])
    out = {}
    for s in day_stats(sb.scenario["seed"], platform, account, int(cfg["campaigns"]), since, until, today=today, version=version):
        if platform == "meta":
            spend = Decimal(s.spend_cents) / 100
            has_purchases = s.purchases and purchase_source != "none"
            conversions = Decimal(s.purchases) if has_purchases else Decimal(0)
            revenue = Decimal(s.purchase_value_cents) / 100 if has_purchases else Decimal(0)
        else:
            spend = Decimal(s.spend_cents * 10_000 + s.extra_micros) / Decimal(1_000_000)
            conversions = Decimal(str(s.purchases + s.fractional_conversions))
            revenue = Decimal(str(s.purchase_value_cents / 100))
        out[(s.campaign_id, s.day)] = (spend, s.impressions, s.clicks, conversions, revenue)
    return out


def stored(engine, integration_id: int) -> dict:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT campaign_id, date, spend, impressions, clicks, conversions, revenue, ctr, cpc, roas, currency "
                "FROM campaign_metrics WHERE integration_id = :i"
            ),
            {"i": integration_id},
        ).all()
    out = {}
    for r in rows:
        day = r.date if isinstance(r.date, date) else date.fromisoformat(r.date)
        out[(r.campaign_id, day)] = r
    return out


def values(rows: dict) -> dict:
    """Stored rows in the shape of ``expected``: Decimals compared at the stored precision (6 places)."""
    q = Decimal("0.000001")
    return {
        k: (
            Decimal(str(r.spend)).quantize(q),
            int(r.impressions),
            int(r.clicks),
            Decimal(str(r.conversions)).quantize(q),
            Decimal(str(r.revenue)).quantize(q),
        )
        for k, r in rows.items()
    }


def quantized(exp: dict) -> dict:
    q = Decimal("0.000001")
    return {k: (v[0].quantize(q), v[1], v[2], v[3].quantize(q), v[4].quantize(q)) for k, v in exp.items()}


def integration(cli, integration_id: int) -> dict:
    return next(i for i in json.loads(cli("integrations", "list", "--json").out) if i["id"] == integration_id)


def spawn_on_terminal(*args: str, **popen) -> tuple[int, subprocess.Popen]:
    """Start `emsync ARGS...` with a pseudo-terminal (160 columns) for stdin, stdout and stderr; (its primary end, the
    process). The caller reads the screen from the primary end and closes it."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "emsync", *args],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
        close_fds=True,
        **popen,
    )
    os.close(secondary)
    return primary, proc


def on_terminal(*args: str) -> tuple[int, str]:
    """Run `emsync ARGS...` with a pseudo-terminal for stdin, stdout and stderr; (exit code, the screen without escapes)."""
    primary, proc = spawn_on_terminal(*args)
    output = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:
            break
        if not data:
            break
        output.append(data)
    proc.wait(timeout=60)
    os.close(primary)
    return proc.returncode, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(output).decode("utf-8", "replace"))


@contextmanager
def pg_role(pg_server, db_url: str, prefix: str, *, role_options: str = "", database_grant: str = "ALL") -> Iterator[tuple[str, str]]:
    """A NOSUPERUSER login role on the test database (limits and privileges do not bind superusers): ``role_options``
    added to CREATE ROLE (e.g. ``CONNECTION LIMIT 2``), ``database_grant`` on the database, every privilege on its
    tables and sequences. Yields (name, URL); afterwards its sessions are ended and the role dropped."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    admin = pg_server[0]
    name = f"{prefix}_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    database = make_url(db_url).database
    owner = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {name} LOGIN NOSUPERUSER PASSWORD 'role' {role_options}"))
        conn.execute(text(f'GRANT {database_grant} ON DATABASE "{database}" TO {name}'))
    with owner.connect() as conn:
        conn.execute(text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {name}"))
        conn.execute(text(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {name}"))
    try:
        yield name, make_url(db_url).set(username=name, password="role").render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :n"), {"n": name})
            conn.execute(text(f'REVOKE ALL ON DATABASE "{database}" FROM {name}'))
        with owner.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {name}"))
        owner.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {name}"))
