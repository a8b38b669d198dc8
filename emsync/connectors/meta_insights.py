"""Meta's insights query and answers as data: the query emsync sends, a page's and one row's parsing, the usage
headers, and where a paging chain may end. No HTTP here (``meta`` sends the requests).

A page is read twice over at most: first by a typed decoder (msgspec) that turns the documented shape
straight into numbers, then, only when that shape does not hold (an error object, a field of an unexpected
type, a value that is not a number), the general way (``json`` and ``parse_row``), which says what is wrong.
Both give the same rows for every answer the typed decoder accepts (tested property by property).

Documents: Ads Insights (https://developers.facebook.com/docs/marketing-api/insights), Ads Action Stats
(attribution window keys), Insights best practices (usage headers, ``x-fb-ads-insights-throttle``).
"""

from __future__ import annotations

import json
import math
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

import msgspec

from ..domain import InsightRow, SyncWindow
from ..errors import FatalApiError
from ..numbers import ZERO, api_decimal, api_int, finite
from .base import campaign_id_text

FIELDS = "campaign_id,campaign_name,spend,impressions,clicks,inline_link_clicks,actions,action_values"
PAGE_SIZE = 500
# Account-level insights leave out deleted and archived campaigns unless the query filters on their status.
# Only values valid for campaign.effective_status: one invalid value fails every query (error 100/1487561).
EFFECTIVE_STATUSES = ("ACTIVE", "PAUSED", "DELETED", "ARCHIVED", "IN_PROCESS", "WITH_ISSUES")
THROTTLE_AT_PCT = 90.0
# A chain that keeps sending empty pages with a fresh ``next`` ends after this many in a row.
EMPTY_PAGES_END = 3


def insights_params(window: SyncWindow, attribution_windows: tuple[str, ...]) -> dict[str, str]:
    """The query for one window: one row per campaign and day, every effective status, the attribution asked for.

    ``attribution_windows`` empty: ``use_unified_attribution_setting=true`` (each ad set's own setting, as
    Ads Manager shows); else ``action_attribution_windows`` with those windows.
    """
    params = {
        "level": "campaign",
        "time_increment": "1",
        "time_range": json.dumps({"since": window.since.isoformat(), "until": window.until.isoformat()}, separators=(",", ":")),
        "fields": FIELDS,
        "filtering": json.dumps(
            [{"field": "campaign.effective_status", "operator": "IN", "value": list(EFFECTIVE_STATUSES)}], separators=(",", ":")
        ),
        "limit": str(PAGE_SIZE),
    }
    if attribution_windows:
        params["action_attribution_windows"] = json.dumps(list(attribution_windows), separators=(",", ":"))
    else:
        params["use_unified_attribution_setting"] = "true"
    return params


def page_cap(days: int, campaigns: int, page_size: int = PAGE_SIZE) -> int:
    """Most pages one query may take: the rows it can have (days × campaigns seen so far) over the page
    size, doubled, plus five. ``page_size`` is the largest page Meta actually served (it may serve fewer rows
    than the ``limit`` asked for). Recomputed as pages bring new campaigns and larger pages, so only a chain
    that stops bringing them reaches it."""
    return math.ceil(days * max(campaigns, 1) / max(1, min(page_size, PAGE_SIZE))) * 2 + 5


# ---------------------------------------------------------------- usage headers


def usage(headers) -> tuple[float, float]:
    """(highest usage percent, seconds until access is regained) from Meta's usage headers:
    ``X-Business-Use-Case-Usage``, ``X-Ad-Account-Usage``, ``X-App-Usage`` and the older
    ``x-fb-ads-insights-throttle`` (``app_id_util_pct``, ``acc_id_util_pct``)."""
    pct, wait = 0.0, 0.0

    def load(name):
        raw = headers.get(name)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def numbers(entry: dict, keys) -> list[float]:
        found = []
        for key in keys:
            try:
                found.append(float(entry.get(key) or 0))
            except (TypeError, ValueError):
                pass
        return found

    buc = load("X-Business-Use-Case-Usage")
    if isinstance(buc, dict):
        for entries in buc.values():
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict):
                    pct = max([pct, *numbers(entry, ("call_count", "total_cputime", "total_time"))])
                    wait = max([wait, *[m * 60 for m in numbers(entry, ("estimated_time_to_regain_access",))]])
    account = load("X-Ad-Account-Usage")
    if isinstance(account, dict):
        pct = max([pct, *numbers(account, ("acc_id_util_pct",))])
        if pct >= 100:
            wait = max([wait, *numbers(account, ("reset_time_duration",))])
    app = load("X-App-Usage")
    if isinstance(app, dict):
        pct = max([pct, *numbers(app, ("call_count", "total_cputime", "total_time"))])
    throttle = load("x-fb-ads-insights-throttle")
    if isinstance(throttle, dict):
        pct = max([pct, *numbers(throttle, ("app_id_util_pct", "acc_id_util_pct"))])
    return pct, wait


def throttle_delay(pct: float, wait: float, max_wait: float) -> float:
    """How long to pause after a successful call, so we slow down before Meta refuses.

    Below 90 % nothing; from 90 % the time Meta says access returns, or one
    second per point above 89 % when it does not say; never above ``max_wait``.
    """
    if pct < THROTTLE_AT_PCT:
        return 0.0
    return min(max_wait, wait if wait > 0 else pct - 89)


# ---------------------------------------------------------------- one row


def pick_conversions(actions, action_values, types: tuple[str, ...], windows: tuple[str, ...] = ()) -> tuple[Decimal, Decimal]:
    """Conversions and revenue from the first listed action type present; never a sum of overlapping types.

    ``windows`` empty: each action's ``value`` (the attribution the query asked for); else the sum of the
    listed window keys of that action (``7d_click`` + ``1d_view``), absent keys counting 0.
    """
    counts = _listed(actions, types)
    values = _listed(action_values, types)
    chosen = next((t for t in types if t in counts), None) or next((t for t in types if t in values), None)
    if chosen is None:
        return ZERO, ZERO
    return _amount(counts.get(chosen), windows, "conversion count"), _amount(values.get(chosen), windows, "conversion value")


def _listed(items, types: tuple[str, ...]) -> dict:
    """{action_type: the action object} for the listed types only (most actions are clicks and views: skip them cheaply)."""
    found = {}
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                kind = item.get("action_type")
                if kind in types:
                    found[kind] = item
    return found


def _amount(item: dict | None, windows: tuple[str, ...], what: str) -> Decimal:
    if item is None:
        return ZERO
    if not windows:
        return api_decimal(item.get("value", "0"), "Meta", what)
    total = ZERO
    for window in windows:
        total += api_decimal(item.get(window), "Meta", what)
    return total


def parse_row(item: dict, types: tuple[str, ...], windows: tuple[str, ...] = ()) -> InsightRow:
    """One element of an insights ``data`` list, asked with ``time_increment=1``.

    Raises:
        FatalApiError: no campaign id or date, or a row spanning several days (it is not one day's figures).
    """
    try:
        campaign_id = campaign_id_text(item["campaign_id"])
        day = date.fromisoformat(str(item["date_start"]))
        stop = item.get("date_stop")
        last = day if stop is None else date.fromisoformat(str(stop))
    except (AttributeError, KeyError, ValueError, TypeError):
        raise _no_id_or_date() from None
    _one_day(campaign_id, day, last)
    conversions, revenue = pick_conversions(item.get("actions"), item.get("action_values"), types, windows)
    return InsightRow(
        campaign_id=campaign_id,
        date=day,
        campaign_name=item.get("campaign_name"),
        spend=api_decimal(item.get("spend"), "Meta", "spend"),
        impressions=api_int(item.get("impressions"), "Meta", "impression count"),
        clicks=api_int(item.get("clicks"), "Meta", "click count"),
        conversions=conversions,
        revenue=revenue,
        link_clicks=api_int(item.get("inline_link_clicks"), "Meta", "link click count"),
    )


def _no_id_or_date() -> FatalApiError:
    return FatalApiError("Meta returned an insights row without campaign_id or date_start; refused the answer, nothing was changed")


def _one_day(campaign_id: str, day: date, last: date) -> None:
    if last != day:
        raise FatalApiError(
            f"Meta returned a row for campaign {campaign_id} covering {day} to {last}, not one day (the query asks "
            "time_increment=1); refused the answer, nothing was changed"
        )


# ---------------------------------------------------------------- one page


class _Paging(msgspec.Struct, gc=False):
    next: str | None = None


class _Row(msgspec.Struct, gc=False):
    """An insights row in the shape Meta documents: ids, names and dates as strings, money as decimal strings
    ("12.34"), counts as integer strings. Absent numbers are 0, as ``parse_row`` reads them. No ``| None`` but on
    strings: the lenient decoder reads the string "null" as null for other types, where ``parse_row`` refuses it."""

    campaign_id: Annotated[str, msgspec.Meta(min_length=1)]  # "": no id, read the general way (refused there)
    date_start: date
    date_stop: date | msgspec.UnsetType = msgspec.UNSET
    campaign_name: str | None = None
    spend: Decimal = ZERO
    impressions: int = 0
    clicks: int = 0
    inline_link_clicks: int = 0
    actions: Any = None  # read by ``pick_conversions``, whatever their shape
    action_values: Any = None


class InsightsPage(msgspec.Struct, gc=False):
    """One insights page as the typed decoder reads it (``decode_page``)."""

    data: list[_Row]
    paging: _Paging | msgspec.UnsetType = msgspec.UNSET
    error: Any = None


_PAGE_DECODER = msgspec.json.Decoder(InsightsPage, strict=False)  # strict=False: numbers sent as strings


def decode_page(raw: bytes) -> InsightsPage | None:
    """A 200's body as an ``InsightsPage``; None when it is not a plain page in the documented shape (an error
    object, a field of another type, not JSON): the caller then reads it the general way, which names the fault."""
    try:
        page = _PAGE_DECODER.decode(raw)
    except msgspec.MsgspecError:
        return None
    return None if page.error else page


def read_page(body: InsightsPage | dict, types: tuple[str, ...], windows: tuple[str, ...] = ()) -> tuple[list[InsightRow], Any]:
    """The rows of one page and its ``paging.next`` (None or "" at the end), from ``decode_page``'s page or a
    generally decoded body.

    Raises:
        FatalApiError: data or paging of the wrong shape, or a row ``parse_row`` refuses.
    """
    if not isinstance(body, InsightsPage):
        data, paging = body.get("data") or [], body.get("paging") or {}
        if not isinstance(data, list) or not isinstance(paging, dict):
            raise FatalApiError("Meta returned an insights page whose data or paging emsync cannot read")
        return [parse_row(item, types, windows) for item in data], paging.get("next")
    rows: list[InsightRow] = []
    append = rows.append
    for r in body.data:
        day = r.date_start
        if r.date_stop is not msgspec.UNSET and r.date_stop != day:
            _one_day(r.campaign_id, day, r.date_stop)
        if r.actions is None and r.action_values is None:
            conversions = revenue = ZERO
        else:
            conversions, revenue = pick_conversions(r.actions, r.action_values, types, windows)
        append(
            InsightRow(
                r.campaign_id,
                day,
                r.campaign_name,
                finite(r.spend, "Meta", "spend"),
                r.impressions,
                r.clicks,
                conversions,
                revenue,
                r.inline_link_clicks,
            )
        )
    return rows, body.paging.next if body.paging is not msgspec.UNSET else None
