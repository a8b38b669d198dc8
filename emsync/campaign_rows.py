"""The ``campaign_metrics`` table: an integration's window replaced as exactly as the answer allows, and the
ratios derived from it (``campaigns`` keeps the campaigns themselves).

Functions take a connection inside a write transaction the caller owns
(``db.write_transaction``), so one integration's rows, its status and its
attempt record commit together or not at all.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from sqlalchemy import bindparam, delete, func, select

from . import campaigns
from .domain import Fetched, InsightRow, SyncWindow
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
    (or the ratio is beyond what NUMERIC(18, 6) holds). ``clicks``: all clicks, or link clicks under
    META_CLICKS=link."""
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
    "link_clicks",
    "conversions",
    "revenue",
    "ctr",
    "cpc",
    "roas",
    "currency",
    "synced_at",
)
_KEY = ("integration_id", "campaign_id", "date")
_ON_CONFLICT = f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in _METRIC_COLUMNS if c not in _KEY
)


def _upsert_sql(conn) -> str:
    """The dialect upsert (SQLite >= 3.24 and PostgreSQL share the ON CONFLICT syntax), in the driver's paramstyle."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return f"INSERT INTO campaign_metrics ({', '.join(_METRIC_COLUMNS)}) VALUES ({', '.join([mark] * len(_METRIC_COLUMNS))}) {_ON_CONFLICT}"


# From this many rows a PostgreSQL write goes through COPY. Client CPU per write, psycopg 3, measured 2026-11-30
# (rows: executemany / COPY + one INSERT … SELECT): 5: 0.17 / 0.23 ms, 10: 0.24 / 0.22, 15: 0.29 / 0.23,
# 25: 0.40 / 0.26, 53: 0.96 / 0.44, 600: 8.9 / 2.6 (an INSERT … SELECT FROM unnest(…) of the same rows: 0.72 ms
# at 53, 6.2 at 600). The staging table is made once per session, not per write, so a low threshold costs the
# catalogue nothing; a steady 30-minute write is 15-60 rows per integration, a full window or a backfill chunk hundreds.
COPY_THRESHOLD = 10
_STAGING = "emsync_metrics_in"


def _upsert(conn, values: list[tuple]) -> None:
    """Insert or update ``values`` (``_driver_rows``) in ``campaign_metrics``, inside the caller's transaction."""
    if conn.dialect.name == "postgresql" and len(values) >= COPY_THRESHOLD and _may_use_temporary_tables(conn):
        _copy_upsert(conn, values)
    else:
        conn.exec_driver_sql(_upsert_sql(conn), values)


def _may_use_temporary_tables(conn) -> bool:
    """Whether this role may create the staging table (the TEMP privilege: PostgreSQL grants it to every role unless
    an administrator revoked it). Asked once per connection; without it, large writes are batched upserts too."""
    info = conn.connection.info
    allowed = info.get("emsync_temp_allowed")
    if allowed is None:
        allowed = bool(conn.exec_driver_sql("SELECT has_database_privilege(current_database(), 'TEMP')").scalar())
        info["emsync_temp_allowed"] = allowed
    return allowed


# Copied per row; integration_id, currency and synced_at are the same for every row of a write, so they are
# given once, as parameters of the INSERT … SELECT (a timestamptz is the costliest value to format for COPY:
# a third less client CPU per row without these three).
_COPIED = _METRIC_COLUMNS[1:13]
assert _METRIC_COLUMNS[0] == "integration_id" and _METRIC_COLUMNS[13:] == ("currency", "synced_at")


@functools.cache
def _copy_statements() -> tuple[str, str, str]:
    """The staging table (its columns typed as ``campaign_metrics``'s, from the model), the COPY, the move."""
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()
    typed = ", ".join(f"{c} {metrics_t.c[c].type.compile(dialect=dialect)}" for c in _COPIED)
    copied = ", ".join(_COPIED)
    return (
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} ({typed}) ON COMMIT DELETE ROWS",
        f"COPY {_STAGING} ({copied}) FROM STDIN",
        f"WITH moved AS (DELETE FROM {_STAGING} RETURNING {copied}) INSERT INTO campaign_metrics ({', '.join(_METRIC_COLUMNS)}) "
        f"SELECT %s::{metrics_t.c.integration_id.type.compile(dialect=dialect)}, {copied}, "
        f"%s::text, %s::timestamptz FROM moved {_ON_CONFLICT}",  # text: an over-long value fails as the upsert's would
    )


def _copy_upsert(conn, values: list[tuple]) -> None:
    """PostgreSQL, many rows: ``COPY`` into this session's staging table, then one statement moves them (``DELETE …
    RETURNING`` into ``INSERT … ON CONFLICT``), so the staging table is empty again within the transaction.

    The staging table is a temporary table made once per connection (``IF NOT EXISTS``: a rolled-back transaction
    that made it leaves none, and the next write makes it again); ``ON COMMIT DELETE ROWS`` empties it in place
    at commit, without touching the catalogue. Temporary tables need the database's TEMP privilege, which
    PostgreSQL grants to every role by default (``_may_use_temporary_tables``). ``values`` are one integration's
    (``_driver_rows``): the same integration, currency and ``synced_at`` on every row.
    """
    create, copy_in, move = _copy_statements()
    first = values[0]
    conn.exec_driver_sql(create)
    cursor = conn.connection.driver_connection.cursor()
    try:
        with cursor.copy(copy_in) as copy:
            for row in values:
                copy.write_row(row[1:13])
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _as_statement_error(conn, cursor, copy_in, exc) from None
    finally:
        cursor.close()
    conn.exec_driver_sql(move, (first[0], first[13], first[14]))


def _as_statement_error(conn, cursor, statement: str, exc: Exception) -> Exception:
    """A driver error of the COPY (which goes to psycopg's cursor directly) as SQLAlchemy reports a statement's:
    wrapped in ``DBAPIError`` (so it reads "database error: …" in one line, never the driver's CONTEXT with row
    data), and a lost connection invalidated so the pool does not hand it out again."""
    from sqlalchemy.exc import DBAPIError

    lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if lost:
        conn.invalidate(exc)
    return DBAPIError.instance(statement, None, exc, conn.dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=conn.dialect)


def _driver_rows(
    conn,
    integration_id: int,
    rows: Iterable[InsightRow],
    currency: str | None,
    synced_at: datetime,
    *,
    names: dict[str, str | None],
    link_ratios: bool,
) -> list[tuple]:
    """Rows as the driver takes them, in ``_METRIC_COLUMNS`` order, built in one pass; each with its
    campaign's current name (``names``).

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
    quantize, six, half_up, limit = Decimal.quantize, SIX_PLACES, ROUND_HALF_UP, NUMERIC_LIMIT
    for row in rows:
        # _q and _ratio written out: this loop runs once per stored row (a quarter of a million in a full agency run)
        try:
            spend, conversions, revenue = (
                quantize(row.spend, six, half_up),
                quantize(row.conversions, six, half_up),
                quantize(row.revenue, six, half_up),
            )
        except InvalidOperation:  # beyond 28 significant digits at six places: far beyond NUMERIC(18, 6)
            _refuse_beyond_numeric(row, row.spend, row.conversions, row.revenue)
            raise
        if abs(spend) >= limit or abs(conversions) >= limit or abs(revenue) >= limit:
            _refuse_beyond_numeric(row, spend, conversions, revenue)
        impressions, link_clicks = row.impressions, row.link_clicks
        clicks = link_clicks if link_ratios and link_clicks is not None else row.clicks
        ctr = cpc = roas = None
        if impressions:
            ctr = quantize(Decimal(clicks * 100) / impressions, six, half_up)
            if abs(ctr) >= limit:
                ctr = None
        if clicks:
            cpc = quantize(spend / clicks, six, half_up)
            if abs(cpc) >= limit:
                cpc = None
        if spend:
            roas = quantize(revenue / spend, six, half_up)
            if abs(roas) >= limit:  # e.g. revenue over one micro of spend: not storable, not meaningful
                roas = None
        day = dates.get(row.date)
        if day is None:
            day = dates[row.date] = date_proc(row.date) if date_proc else row.date
        name = names.get(row.campaign_id, row.campaign_name)
        if native:
            append(
                (
                    integration_id,
                    row.campaign_id,
                    day,
                    name,
                    spend,
                    impressions,
                    row.clicks,
                    link_clicks,
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
                    name,
                    float(spend),
                    impressions,
                    row.clicks,
                    link_clicks,
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


def _refuse_beyond_numeric(row: InsightRow, spend: Decimal, conversions: Decimal, revenue: Decimal) -> None:
    for metric, value in (("spend", spend), ("conversions", conversions), ("revenue", revenue)):
        if abs(value) >= NUMERIC_LIMIT:
            raise FatalApiError(f"campaign {row.campaign_id} on {row.date}: {metric} {value} is beyond what emsync stores (NUMERIC(18,6))")


@dataclass(frozen=True, slots=True)
class WindowWrite:
    """What ``replace_window`` did: rows written, and warnings (campaigns missing from a whole answer)."""

    rows: int
    warnings: tuple[str, ...] = ()


def replace_window(
    conn,
    integration_id: int,
    window: SyncWindow,
    fetched: Fetched,
    currency: str | None,
    synced_at: datetime,
    *,
    link_ratios: bool = False,
) -> WindowWrite:
    """Make the integration's rows for the window's dates equal what the platform answered, as far as the
    answer can tell; keep ``campaigns`` current.

    One upsert for everything returned. Then, only when the answer is ``complete``, one count per campaign of
    the rows in the window and, when it shows days that campaigns present in the answer no longer have, one
    delete of them (every row just written carries ``synced_at``). Rows
    of a campaign absent from the whole answer are never deleted: it may be deleted or archived upstream
    and left out of the answer; it is marked vanished in ``campaigns`` and reported in the warnings.
    ``link_ratios``: CTR and CPC divide by link clicks (META_CLICKS=link) instead of all clicks.

    Raises:
        FatalApiError: a row outside the window (nothing is written), or a value beyond NUMERIC(18, 6).
    """
    unique: dict[tuple[str, date], InsightRow] = {}
    for row in fetched.rows:
        if not window.since <= row.date <= window.until:
            raise FatalApiError(f"campaign {row.campaign_id} has a row dated {row.date}, outside the window {window.since}..{window.until}")
        unique[(row.campaign_id, row.date)] = row
    names = current_names(unique.values())
    values = _driver_rows(conn, integration_id, unique.values(), currency, synced_at, names=names, link_ratios=link_ratios)
    if values:
        _upsert(conn, values)
    present = {campaign_id for campaign_id, _ in unique}
    warnings: tuple[str, ...] = ()
    if fetched.complete:
        where = {"integration_id": integration_id, "since": window.since, "until": window.until}
        stored = dict(conn.execute(_stored_per_campaign(), where).all())
        absent = sorted(set(stored) - present)
        # The count is taken after the upsert, so the present campaigns' rows beyond those just written are the
        # days the answer no longer has; none (the usual case): no DELETE to send.
        if sum(stored.get(c, 0) for c in present) != len(unique):
            if absent:
                gone = delete(metrics_t).where(*_in_window(), metrics_t.c.synced_at != bindparam("synced_at"))
                for chunk in _chunks(absent):
                    gone = gone.where(metrics_t.c.campaign_id.not_in(chunk))
            else:
                gone = _delete_older()  # built once (see ``statements``)
            conn.execute(gone, {**where, "synced_at": synced_at})
        warnings = campaigns.mark_vanished(conn, integration_id, {c: stored[c] for c in absent}, window, synced_at)
    campaigns.remember(conn, integration_id, names, fetched.statuses, synced_at)
    return WindowWrite(len(values), warnings)


def _in_window() -> tuple:
    c = metrics_t.c
    return c.integration_id == bindparam("integration_id"), c.date >= bindparam("since"), c.date <= bindparam("until")


@functools.cache
def _stored_per_campaign():
    """Rows stored per campaign in an integration's window."""
    return select(metrics_t.c.campaign_id, func.count()).where(*_in_window()).group_by(metrics_t.c.campaign_id)


@functools.cache
def _delete_older():
    """The window's rows the write did not just touch (their ``synced_at`` is older)."""
    return delete(metrics_t).where(*_in_window(), metrics_t.c.synced_at != bindparam("synced_at"))


def current_names(rows: Iterable[InsightRow]) -> dict[str, str | None]:
    """Each campaign's current name: the one on its latest named day in the answer (the platforms send the
    current name on every day; this only matters when one answer mixes names). None when it had none."""
    names: dict[str, str | None] = {}
    named_on: dict[str, date] = {}
    for row in rows:
        names.setdefault(row.campaign_id, None)
        if row.campaign_name is not None and (row.campaign_id not in named_on or row.date >= named_on[row.campaign_id]):
            named_on[row.campaign_id] = row.date
            names[row.campaign_id] = row.campaign_name
    return names


def _chunks(items: list, size: int = 500) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def metric_rows(conn, integration_id: int) -> list[dict]:
    query = select(metrics_t).where(metrics_t.c.integration_id == integration_id).order_by(metrics_t.c.date, metrics_t.c.campaign_id)
    return [dict(r._mapping) for r in conn.execute(query)]


def rows_since(conn, since: date, ids: Iterable[int] | None = None) -> dict[int, int]:
    """Rows per integration dated ``since`` or later (the status table's "rows in window"); only those of ``ids``
    when given (counting every integration's rows reads the whole window: 1.5 million rows at 10,000 integrations)."""
    query = select(metrics_t.c.integration_id, func.count()).where(metrics_t.c.date >= since).group_by(metrics_t.c.integration_id)
    if ids is None:
        return {i: n for i, n in conn.execute(query)}
    counts: dict[int, int] = {}
    for chunk in _chunks(sorted(set(ids))):
        counts.update({i: n for i, n in conn.execute(query.where(metrics_t.c.integration_id.in_(chunk)))})
    return counts
