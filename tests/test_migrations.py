"""Schema upgrades keep the data: a database with rows made by schema 0001, upgraded by `emsync init`, on SQLite
and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, Column, Date, DateTime, Integer, MetaData, Numeric, String, Table, Text, insert, text

from emsync import db
from emsync.crypto import TokenBox

from .conftest import TEST_KEY
from .helpers import integration

# The three tables as schema 0001 made them (only what these rows need): models.py has moved on.
_md = MetaData()
USERS = Table("users", _md, Column("id", Integer, primary_key=True), Column("email", String), Column("created_at", DateTime(timezone=True)))
INTEGRATIONS = Table(
    "integrations",
    _md,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer),
    Column("platform", String),
    Column("account_id", String),
    Column("is_active", Boolean),
    Column("status", String),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
    Column("access_token_enc", Text),
)
METRICS = Table(
    "campaign_metrics",
    _md,
    Column("integration_id", Integer, primary_key=True),
    Column("campaign_id", String, primary_key=True),
    Column("date", Date, primary_key=True),
    Column("campaign_name", String),
    Column("spend", Numeric(18, 6)),
    Column("impressions", BigInteger),
    Column("clicks", BigInteger),
    Column("conversions", Numeric(18, 6)),
    Column("revenue", Numeric(18, 6)),
    Column("currency", String),
    Column("synced_at", DateTime(timezone=True)),
)


def _at_0001(url: str):
    from alembic import command
    from alembic.config import Config

    engine = db.make_engine(url, create=True)
    cfg = Config()
    cfg.set_main_option("script_location", "emsync:migrations")
    with db.write_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    return engine


def test_upgrade_from_0001_keeps_every_row_and_gives_each_campaign_one_name(cli, empty_db_url, monkeypatch, make_sandbox):
    monkeypatch.setenv("EMSYNC_DATABASE_URL", empty_db_url)
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    engine = _at_0001(empty_db_url)
    now = datetime.now(UTC)
    old = date.today() - timedelta(days=90)  # outside the sync window: untouched by the sync below
    with engine.begin() as conn:
        conn.execute(insert(USERS).values(id=1, email="anna@example.com", created_at=now))
        conn.execute(
            insert(INTEGRATIONS).values(
                id=1,
                user_id=1,
                platform="meta",
                account_id="1",
                is_active=True,
                status="ok",
                created_at=now,
                updated_at=now,
                access_token_enc=TokenBox(TEST_KEY).encrypt("EAABmigrated-token"),
            )
        )
        days = [("A", old, "Spring sale"), ("A", old + timedelta(days=1), "Spring sale"), ("A", old + timedelta(days=2), "Spring sale 2")]
        days.append(("B", old + timedelta(days=1), "Brand"))
        for campaign_id, day, name in days:
            conn.execute(
                insert(METRICS).values(
                    integration_id=1,
                    campaign_id=campaign_id,
                    date=day,
                    campaign_name=name,
                    spend=Decimal("12.34"),
                    impressions=100,
                    clicks=7,
                    conversions=Decimal(1),
                    revenue=Decimal("9.5"),
                    currency="PLN",
                    synced_at=now,
                )
            )
    result = cli("init", "--yes")
    assert result.code == 0 and f"from 0001 to {db.HEAD}" in result.out, result.out + result.err
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT campaign_id, campaign_name, link_clicks, spend FROM campaign_metrics ORDER BY campaign_id, date")
        ).all()
        campaigns = conn.execute(text("SELECT campaign_id, name, status, vanished FROM campaigns ORDER BY campaign_id")).all()
        seen = conn.execute(text("SELECT campaign_id, first_day, last_day, days FROM campaign_days_seen ORDER BY campaign_id")).all()
        columns = conn.execute(text("SELECT last_warning, last_warning_at, next_attempt_at FROM integrations")).one()
        access = conn.execute(text("SELECT data_access_expires_at, token_checked_at FROM credentials")).one()
    assert len(rows) == 4 and all(Decimal(str(r.spend)) == Decimal("12.34") for r in rows), "no row lost or changed"
    assert all(r.link_clicks is None for r in rows), "link clicks unknown for rows synced before"
    assert [r.campaign_name for r in rows] == ["Spring sale 2"] * 3 + ["Brand"], "each campaign's latest name on every day"
    assert [(c.campaign_id, c.name, c.status, bool(c.vanished)) for c in campaigns] == [
        ("A", "Spring sale 2", None, False),
        ("B", "Brand", None, False),
    ]
    assert [(s.campaign_id, str(s.first_day)[:10], str(s.last_day)[:10], s.days) for s in seen] == [
        ("A", str(old), str(old + timedelta(days=2)), 3),
        ("B", str(old + timedelta(days=1)), str(old + timedelta(days=1)), 1),
    ]
    assert tuple(columns) == (None, None, None) and tuple(access) == (None, None), "new columns start empty"

    make_sandbox()
    assert cli("sync-all").code == 0
    assert integration(cli, 1)["status"] == "ok"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM campaign_metrics WHERE campaign_id IN ('A', 'B')")).scalar() == 4
    engine.dispose()
