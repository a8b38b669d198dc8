"""What the platforms hide by default is still spend (kind 9), one campaign one name (kind 10), conversions and
clicks as Ads Manager counts them (META_ATTRIBUTION, META_CLICKS): over real sockets, on both databases."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import text

from emsync.sandbox.data import campaign_ids

from .conftest import add_google, add_meta
from .helpers import expected, integration, pg_role, quantized, stored, values

pytestmark = pytest.mark.usefixtures("any_db")


def _campaigns(engine, integration_id: int) -> dict:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT campaign_id, name, status, vanished, vanished_at FROM campaigns WHERE integration_id = :i"), {"i": integration_id}
        ).all()
    return {r.campaign_id: r for r in rows}


def _names(engine, integration_id: int) -> dict[str, set[str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT campaign_id, campaign_name FROM campaign_metrics WHERE integration_id = :i"), {"i": integration_id}
        )
        out: dict[str, set[str]] = {}
        for campaign_id, name in rows:
            out.setdefault(campaign_id, set()).add(name)
    return out


# ---------------------------------------------------------------- kind 9: deleted and archived campaigns


@pytest.mark.parametrize("state", ["DELETED", "ARCHIVED"])
def test_deleted_and_archived_campaigns_are_asked_for_and_keep_their_spend(cli, engine, make_sandbox, state):
    sb = make_sandbox({"meta_accounts": {"1": {"campaigns": 4}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    gone = campaign_ids("meta", "1", 4)[2][0]
    sb.set_account("meta", "1", campaign_states={gone: state})
    assert cli("sync-all", "--full").code == 0
    rows = values(stored(engine, integration_id))
    assert rows == quantized(expected(sb, "meta", "1")), "the query asks for every effective status"
    assert any(campaign == gone for campaign, _ in rows)
    assert integration(cli, integration_id)["last_warning"] is None


@pytest.mark.parametrize("platform", ["meta", "google"])
def test_a_campaign_missing_from_the_whole_answer_keeps_its_rows_and_is_marked_vanished(cli, engine, make_sandbox, platform):
    account = "1" if platform == "meta" else "1111111111"
    sb = make_sandbox({"meta_accounts": {"1": {"campaigns": 4}}, "google_customers": {"1111111111": {"campaigns": 4}}})
    integration_id = add_meta(cli, account="act_1") if platform == "meta" else add_google(cli, account=account)
    assert cli("sync-all").code == 0
    before = values(stored(engine, integration_id))
    last = campaign_ids(platform, account, 4)[3][0]
    # the platform stops returning the fourth campaign at all, and restates: one day of the first campaign goes away
    sb.set_account(platform, account, campaigns=3, restate=True)
    sb.next_call(platform, account, "restate")
    kind = "meta.insights" if platform == "meta" else "google.search_stream"
    calls_before = sb.count(kind, account)
    assert cli("sync-all", "--full").code == 0
    now = values(stored(engine, integration_id))
    kept = {k: v for k, v in before.items() if k[0] == last}
    assert kept and {k: now[k] for k in kept} == kept, "a campaign absent from the whole answer keeps its rows"
    version = sb.count(kind, account) - calls_before  # a call retried under load is answered with the next version
    restated = quantized(expected(sb, platform, account, version=version))
    assert {k: v for k, v in now.items() if k[0] != last} == restated, "vanished days of present campaigns are deleted"
    campaign = _campaigns(engine, integration_id)[last]
    assert campaign.vanished and campaign.vanished_at is not None
    warning = integration(cli, integration_id)["last_warning"]
    assert last in warning and "missing from the whole answer" in warning
    # it comes back: no longer vanished; a clean sync clears the warning
    sb.set_account(platform, account, campaigns=4)
    assert cli("sync-all", "--full").code == 0
    assert not _campaigns(engine, integration_id)[last].vanished
    assert integration(cli, integration_id)["last_warning"] is None


# ---------------------------------------------------------------- kind 10: one campaign, one name


@pytest.mark.parametrize("platform", ["google", "meta"])
def test_a_renamed_campaign_carries_its_current_name_on_every_stored_day(cli, engine, make_sandbox, platform):
    account = "1" if platform == "meta" else "1111111111"
    sb = make_sandbox()
    integration_id = add_meta(cli, account="act_1") if platform == "meta" else add_google(cli, account=account)
    assert cli("sync-all").code == 0
    first = campaign_ids(platform, account, 5)[0][0]
    days_before = sum(1 for campaign, _ in stored(engine, integration_id) if campaign == first)
    assert days_before > 3, "the campaign has days outside the recent window"
    statuses = {"campaign_statuses": {first: "PAUSED"}} if platform == "google" else {}
    sb.set_account(platform, account, campaign_names={first: "BF26 Search (ended)"}, **statuses)
    result = cli("sync-all", "--json")  # an ordinary run: the recent days only
    assert result.code == 0 and '"full": false' in result.out
    assert _names(engine, integration_id)[first] == {"BF26 Search (ended)"}
    campaign = _campaigns(engine, integration_id)[first]
    assert campaign.name == "BF26 Search (ended)"
    assert campaign.status == ("PAUSED" if platform == "google" else None)
    others = _names(engine, integration_id)
    assert all(len(names) == 1 for names in others.values())


def test_first_and_last_day_seen_come_from_the_view(cli, engine, make_sandbox):
    make_sandbox()
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0
    with engine.connect() as conn:
        view = conn.execute(
            text("SELECT campaign_id, first_day, last_day, days FROM campaign_days_seen WHERE integration_id = :i"), {"i": integration_id}
        ).all()
    rows = stored(engine, integration_id)
    assert len(view) == len(_campaigns(engine, integration_id)) == 5
    for campaign_id, first_day, last_day, days in view:
        dates = sorted(day for campaign, day in rows if campaign == campaign_id)
        assert (str(first_day)[:10], str(last_day)[:10], days) == (str(dates[0]), str(dates[-1]), len(dates))


# ---------------------------------------------------------------- attribution


def test_unified_attribution_by_default_as_ads_manager_shows(cli, engine, make_sandbox):
    sb = make_sandbox({"meta_accounts": {"1": {"ad_set_attribution": "1d_click"}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    want = expected(sb, "meta", "1")
    assert any(v[3] > 0 for v in want.values()), "the scenario must have purchases (their count differs by attribution)"
    assert values(stored(engine, integration_id)) == quantized(want)


def test_explicit_attribution_windows_sum_the_listed_window_keys(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("META_ATTRIBUTION", "7d_click,1d_view")
    sb = make_sandbox({"meta_accounts": {"1": {"ad_set_attribution": "1d_click"}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    rows = stored(engine, integration_id)
    compared = 0
    for key, (_, _, _, purchases, revenue) in expected(sb, "meta", "1").items():
        p = int(purchases)
        if not p:
            continue
        counted = (p + p // 2) + (p // 3 + 1)  # the sandbox's 7d_click and 1d_view counts
        assert Decimal(str(rows[key].conversions)) == counted
        assert abs(Decimal(str(rows[key].revenue)) - revenue * counted / p) <= Decimal("0.01") * counted
        compared += 1
    assert compared > 0


@pytest.mark.parametrize("value, words", [("7d_view", "deprecated by Meta"), ("28d_view", "deprecated by Meta"), ("3d_click", "unknown")])
def test_meta_attribution_is_validated_at_start(cli, monkeypatch, value, words):
    monkeypatch.setenv("META_ATTRIBUTION", value)
    result = cli("users", "list")
    assert result.code == 2 and "META_ATTRIBUTION" in result.err and words in result.err and "Traceback" not in result.err


# ---------------------------------------------------------------- clicks: all and link


def test_link_clicks_are_stored_beside_all_clicks_and_ratios_use_all_clicks_by_default(cli, engine, make_sandbox):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT integration_id, clicks, link_clicks, impressions, ctr FROM campaign_metrics WHERE clicks > 4")
        ).all()
    assert {r.integration_id for r in rows} == {meta, google}
    for r in rows:
        assert r.link_clicks == (r.clicks * 3 // 4 if r.integration_id == meta else r.clicks)
        assert abs(Decimal(str(r.ctr)) - Decimal(r.clicks) * 100 / Decimal(r.impressions)) < Decimal("0.000001")
    assert values(stored(engine, meta)) == quantized(expected(sb, "meta", "1")), "clicks keep meaning all clicks"


def test_meta_clicks_link_switches_only_the_ctr_and_cpc_denominators(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("META_CLICKS", "link")
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT clicks, link_clicks, impressions, spend, ctr, cpc FROM campaign_metrics WHERE integration_id = :i AND link_clicks > 0"
            ),
            {"i": meta},
        ).all()
    assert rows
    for r in rows:
        assert abs(Decimal(str(r.ctr)) - Decimal(r.link_clicks) * 100 / Decimal(r.impressions)) < Decimal("0.000001")
        assert abs(Decimal(str(r.cpc)) - Decimal(str(r.spend)) / Decimal(r.link_clicks)) < Decimal("0.000001")
    assert values(stored(engine, meta)) == quantized(expected(sb, "meta", "1")), "clicks still hold all clicks"


# ---------------------------------------------------------------- how rows are written


@pytest.mark.parametrize("path", ["copy", "row_by_row"])
@pytest.mark.parametrize("platform", ["meta", "google"])
def test_every_write_path_stores_the_exact_window_updates_and_deletes(cli, engine, make_sandbox, monkeypatch, platform, path):
    # PostgreSQL writes 100 rows or more with COPY through a staging table, fewer row by row: both must give the
    # same exact rows, restated values updated and vanished days deleted. (SQLite always writes row by row.)
    from emsync import campaign_rows

    monkeypatch.setattr(campaign_rows, "COPY_THRESHOLD", 1 if path == "copy" else 10**9)
    account = "1" if platform == "meta" else "1111111111"
    sb = make_sandbox({"meta_accounts": {"1": {"campaigns": 6}}, "google_customers": {"1111111111": {"campaigns": 6}}})
    integration_id = add_meta(cli, account="act_1") if platform == "meta" else add_google(cli, account=account)
    assert cli("sync-all").code == 0
    assert values(stored(engine, integration_id)) == quantized(expected(sb, platform, account))
    sb.set_account(platform, account, restate=True)
    sb.next_call(platform, account, "restate")
    kind = "meta.insights" if platform == "meta" else "google.search_stream"
    before = sb.count(kind, account)
    assert cli("sync-all", "--full").code == 0
    # Each metrics call restates once more (version 1, 2, …): a call retried on a loaded machine is answered with
    # the next version, and what is stored must be the last answer's.
    version = sb.count(kind, account) - before
    rows = stored(engine, integration_id)
    assert version >= 1 and values(rows) == quantized(expected(sb, platform, account, version=version)), (
        "restated rows updated, removed days deleted"
    )
    for row in rows.values():  # the derived ratios travel the same path
        ctr = None if row.ctr is None else _q6(Decimal(str(row.ctr)))
        assert ctr == (None if not row.impressions else _q6(Decimal(row.clicks) * 100 / Decimal(row.impressions)))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            staged = conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE tablename = 'emsync_metrics_in' AND schemaname NOT LIKE 'pg_temp%'")
            ).scalar()
            assert staged == 0, "the staging table is temporary: no ordinary table left behind"


def _q6(value: Decimal) -> Decimal:
    from decimal import ROUND_HALF_UP

    return value.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_role_without_the_temp_privilege_still_writes_large_windows(cli, engine, db_url, pg_server, make_sandbox, monkeypatch):
    # COPY needs a temporary staging table; an administrator may have revoked TEMP from PUBLIC. Then large windows
    # are written as batched upserts instead of failing.
    from sqlalchemy.engine import make_url

    from emsync import campaign_rows

    monkeypatch.setattr(campaign_rows, "COPY_THRESHOLD", 1)
    with pg_server[0].connect() as conn:
        conn.execute(text(f'REVOKE TEMPORARY ON DATABASE "{make_url(db_url).database}" FROM PUBLIC'))
    with pg_role(pg_server, db_url, "emsync_notemp", database_grant="CONNECT") as (_, role_url):
        sb = make_sandbox({"meta_accounts": {"1": {"campaigns": 6}}})
        integration_id = add_meta(cli, account="act_1")
        monkeypatch.setenv("EMSYNC_DATABASE_URL", role_url)
        result = cli("sync-all")
        assert result.code == 0, result.out + result.err
        assert values(stored(engine, integration_id)) == quantized(expected(sb, "meta", "1"))
