"""The ``campaign_metrics`` table: an integration's window replaced exactly, and the ratios derived from it.

Functions take a connection inside a write transaction the caller owns
(``db.write_transaction``), so one integration's rows, its status and its
attempt record commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import delete, func, select

from .domain import InsightRow, SyncWindow
from .errors import FatalApiError
from .models import metrics_t

SIX_PLACES = Decimal("0.000001")
NUMERIC_LIMIT = Decimal(10) ** 12  # NUMERIC(18, 6): twelve digits before the point


def _q(value: Decimal) -> Decimal:
    return value.quantize(SIX_PLACES, rounding=ROUND_HALF_UP)


def _ratio(numerator: Decimal, denominator: Decimal) -> Decimal | None:
    if not denominator:
        return None
    value = _q(numerator / denominator)
    return value if abs(value) < NUMERIC_LIMIT else None  # e.g. revenue over one micro of spend: not storable, not meaningful


def derived_metrics(spend: Decimal, impressions: int, clicks: int, revenue: Decimal) -> dict:
    """CTR (percent), CPC and ROAS from the stored base metrics; None when the denominator is 0
    (or the ratio is beyond what NUMERIC(18, 6) holds)."""
    return {
        "ctr": _ratio(Decimal(clicks) * 100, Decimal(impressions)),
        "cpc": _ratio(spend, Decimal(clicks)),
        "roas": _ratio(revenue, spend),
    }


_METRIC_COLUMNS = (
    "integration_id",
    "campaign_id",
    "date",
    "campaign_name",
    "spend",
    "impressions",
    "clicks",
    "conversions",
    "revenue",
    "ctr",
    "cpc",
    "roas",
    "currency",
    "synced_at",
)
_KEY = ("integration_id", "campaign_id", "date")


def _upsert_sql(conn) -> str:
    """The dialect upsert (SQLite >= 3.24 and PostgreSQL share the ON CONFLICT syntax), in the driver's paramstyle."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    updates = ", ".join(f"{c} = excluded.{c}" for c in _METRIC_COLUMNS if c not in _KEY)
    return (
        f"INSERT INTO campaign_metrics ({', '.join(_METRIC_COLUMNS)}) VALUES ({', '.join([mark] * len(_METRIC_COLUMNS))}) "
        f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET {updates}"
    )


def _driver_rows(conn, integration_id: int, rows: Iterable[InsightRow], currency: str | None, synced_at: datetime) -> list[tuple]:
    """Rows as the driver takes them, in ``_METRIC_COLUMNS`` order, built in one pass.

    Values are converted exactly as SQLAlchemy would store them (its own bind
    processors for dates and timestamps, float for NUMERIC on SQLite), but once
    per distinct date instead of once per cell: SQLAlchemy's per-row type
    machinery was most of a sync's CPU time.
    """
    dialect = conn.dialect
    native = dialect.name == "postgresql"  # psycopg adapts Decimal, date and aware datetime itself
    date_proc = None if native else metrics_t.c.date.type.dialect_impl(dialect).bind_processor(dialect)
    stamp_proc = None if native else metrics_t.c.synced_at.type.dialect_impl(dialect).bind_processor(dialect)
    stamp = stamp_proc(synced_at) if stamp_proc else synced_at
    dates: dict = {}
    out: list[tuple] = []
    append = out.append
    for row in rows:
        spend, conversions, revenue = _q(row.spend), _q(row.conversions), _q(row.revenue)
        for name, value in (("spend", spend), ("conversions", conversions), ("revenue", revenue)):
            if abs(value) >= NUMERIC_LIMIT:
                raise FatalApiError(
                    f"campaign {row.campaign_id} on {row.date}: {name} {value} is beyond what emsync stores (NUMERIC(18,6))"
                )
        ctr = _ratio(Decimal(row.clicks) * 100, Decimal(row.impressions)) if row.impressions else None
        cpc = _ratio(spend, Decimal(row.clicks)) if row.clicks else None
        roas = _ratio(revenue, spend) if spend else None
        day = dates.get(row.date)
        if day is None:
            day = dates[row.date] = date_proc(row.date) if date_proc else row.date
        if native:
            append(
                (
                    integration_id,
                    row.campaign_id,
                    day,
                    row.campaign_name,
                    spend,
                    row.impressions,
                    row.clicks,
                    conversions,
                    revenue,
                    ctr,
                    cpc,
                    roas,
                    currency,
                    stamp,
                )
            )
        else:
            append(
                (
                    integration_id,
                    row.campaign_id,
                    day,
                    row.campaign_name,
                    float(spend),
                    row.impressions,
                    row.clicks,
                    float(conversions),
                    float(revenue),
                    None if ctr is None else float(ctr),
                    None if cpc is None else float(cpc),
                    None if roas is None else float(roas),
                    currency,
                    stamp,
                )
            )
    return out


def replace_window(
    conn, integration_id: int, window: SyncWindow, rows: Iterable[InsightRow], currency: str | None, synced_at: datetime
) -> int:
    """Make the integration's rows for the window's dates equal ``rows``.

    One upsert for everything returned, then one delete of what the API no
    longer returns for those dates (every surviving row carries ``synced_at``).
    Returns the number of rows written.
    """
    unique: dict[tuple[str, date], InsightRow] = {}
    for row in rows:
        if window.since <= row.date <= window.until:
            unique[(row.campaign_id, row.date)] = row
    values = _driver_rows(conn, integration_id, unique.values(), currency, synced_at)
    if values:
        conn.exec_driver_sql(_upsert_sql(conn), values)
    conn.execute(
        delete(metrics_t).where(
            metrics_t.c.integration_id == integration_id,
            metrics_t.c.date >= window.since,
            metrics_t.c.date <= window.until,
            metrics_t.c.synced_at != synced_at,
        )
    )
    return len(values)


def metric_rows(conn, integration_id: int) -> list[dict]:
    query = select(metrics_t).where(metrics_t.c.integration_id == integration_id).order_by(metrics_t.c.date, metrics_t.c.campaign_id)
    return [dict(r._mapping) for r in conn.execute(query)]


def rows_since(conn, since: date) -> dict[int, int]:
    """Rows per integration dated ``since`` or later (the status table's "rows in window")."""
    query = select(metrics_t.c.integration_id, func.count()).where(metrics_t.c.date >= since).group_by(metrics_t.c.integration_id)
    return {i: n for i, n in conn.execute(query)}
