"""`emsync backfill` over real sockets: exact rows, chunking, resuming by chunk, kill -9, cron alongside, quota, dry run."""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text

from emsync.backfill.plan import add_months

from .conftest import add_google, add_meta
from .helpers import expected_between, on_terminal, quantized, stored, values, window

pytestmark = pytest.mark.usefixtures("any_db")

TABLES = ("users", "integrations", "campaign_metrics", "sync_runs", "sync_attempts", "backfills", "backfill_chunks", "google_operations")


def _months_ago(months: int) -> date:
    return add_months(datetime.now(UTC).date(), -months)


def _backfill(cli, *args: str, code: int = 0) -> dict:
    result = cli("backfill", *args, "--json")
    assert result.code == code, result.err
    return json.loads(result.out)


def _items(report: dict) -> dict[int, dict]:
    return {item["id"]: item for item in report["integrations"]}


def _range(item: dict) -> tuple[date, date]:
    return date.fromisoformat(item["since"]), date.fromisoformat(item["until"])


def _span(span: str) -> tuple[date, date]:
    lo, hi = span.split("..")
    return date.fromisoformat(lo), date.fromisoformat(hi)


def _all_spans(sb) -> Counter:
    """How often each (platform, span) was fetched: a Meta month and a Google quarter may cover the same days."""
    return Counter([("meta", s) for s in sb.spans("meta.insights")] + [("google", s) for s in sb.spans("google.search_stream")])


def _scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def _wait_for(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _assert_exact(sb, engine, integration_id: int, platform: str, account: str, since: date, until: date) -> None:
    want = quantized(expected_between(sb, platform, account, since, until))
    got = values(stored(engine, integration_id))
    assert got == want, f"{platform} {account}: {len(got)} rows stored, {len(want)} served for {since}..{until}"


# ---------------------------------------------------------------- the whole range, exactly


def test_two_year_backfill_lands_exactly_the_sandbox_rows_one_query_per_month_or_quarter(cli, engine, make_sandbox):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    since = _months_ago(24)
    report = _backfill(cli, "--since", since.isoformat())
    assert (report["complete"], report["resume_after"], report["failed"]) == (True, None, 0)
    items = _items(report)
    for integration_id, platform, account in ((meta, "meta", "1"), (google, "google", "1111111111")):
        item = items[integration_id]
        lo, hi = _range(item)
        assert item["status"] == "done" and lo == since
        assert hi == window(sb, platform, account, 30)[0] - timedelta(days=1), "up to the day before the regular window"
        _assert_exact(sb, engine, integration_id, platform, account, lo, hi)
    meta_spans = [_span(s) for s in sb.spans("meta.insights", "1")]
    assert len(meta_spans) == len(set(meta_spans)) == items[meta]["chunks_total"] >= 24
    assert all((lo.year, lo.month) == (hi.year, hi.month) for lo, hi in meta_spans), "one calendar month per insights query"
    google_spans = [_span(s) for s in sb.spans("google.search_stream", "1111111111")]
    assert len(google_spans) == len(set(google_spans)) == items[google]["chunks_total"] >= 8
    assert all(lo.year == hi.year and (lo.month - 1) // 3 == (hi.month - 1) // 3 for lo, hi in google_spans), "one quarter per searchStream"
    # what it reports is what the API saw; the ledger agrees with the API's count of operations
    assert items[meta]["requests"] == sb.count(account="1") + sb.count("meta.debug_token")  # debug_token names no account
    assert items[google]["requests"] == sb.count(account="1111111111") + sb.count("google.token")
    assert (
        items[google]["operations"] == sb.count("google.search_stream") == _scalar(engine, "SELECT sum(operations) FROM google_operations")
    )
    # the regular sync then adds its window: history and window meet without a gap
    assert cli("sync-all").code == 0
    for integration_id, platform, account in ((meta, "meta", "1"), (google, "google", "1111111111")):
        _assert_exact(sb, engine, integration_id, platform, account, since, window(sb, platform, account, 30)[1])


def test_progress_is_kept_per_chunk_so_a_rerun_or_an_earlier_since_fetches_only_what_is_missing(cli, engine, make_sandbox):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    first = _backfill(cli, "--since", _months_ago(6).isoformat())
    first_since = {i: _range(item)[0] for i, item in _items(first).items()}
    sb.reset_log()
    again = _backfill(cli, "--since", _months_ago(6).isoformat())
    assert again["complete"] and again["chunks_fetched"] == 0
    assert sb.count("meta.insights") == sb.count("google.search_stream") == 0, "finished chunks are not fetched again"
    earlier = _backfill(cli, "--since", _months_ago(12).isoformat())
    assert earlier["complete"]
    for integration_id, account in ((meta, "1"), (google, "1111111111")):
        spans = [_span(s) for s in sb.spans("meta.insights" if integration_id == meta else "google.search_stream", account)]
        assert spans and all(hi < first_since[integration_id] for _, hi in spans), "only the days no chunk covered yet"
    items = _items(earlier)
    _assert_exact(sb, engine, meta, "meta", "1", *_range(items[meta]))
    _assert_exact(sb, engine, google, "google", "1111111111", *_range(items[google]))
    sb.reset_log()
    refetched = _backfill(cli, "--since", _months_ago(12).isoformat(), "--refetch")
    assert refetched["chunks_fetched"] == sum(i["chunks_total"] for i in refetched["integrations"])
    assert sb.count("meta.insights") == _items(refetched)[meta]["chunks_total"]
    _assert_exact(sb, engine, meta, "meta", "1", *_range(items[meta]))


def test_meta_range_is_clamped_to_37_months_with_a_warning_naming_the_first_day(cli, engine, make_sandbox):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    since = _months_ago(60).isoformat()
    plan = cli("backfill", "--since", since, "--dry-run")
    assert plan.code == 0 and "Meta serves insights for the last 37 months only" in plan.out
    report = _backfill(cli, "--since", since)
    items = _items(report)
    first = items[meta]["first_available"]
    assert first and items[meta]["since"] == first and first in items[meta]["warnings"][0]
    assert date.fromisoformat(first) - timedelta(days=1) == add_months(sb.today(sb.account("meta", "1")["timezone"]), -37)
    assert min(_span(s)[0] for s in sb.spans("meta.insights", "1")) == date.fromisoformat(first)
    assert [e for e in sb.log if e["status"] != 200] == [], "the API never had to refuse a range"
    assert items[google]["since"] == since and items[google]["warnings"] == [], "Google has no such limit"
    _assert_exact(sb, engine, meta, "meta", "1", *_range(items[meta]))


def test_the_sandbox_refuses_insights_older_than_37_months_with_metas_error(make_sandbox):
    from emsync.config import load_settings
    from emsync.connectors.meta import MetaConnector
    from emsync.domain import Account, Credentials, SyncWindow
    from emsync.errors import FatalApiError
    from emsync.http import HttpClient, new_session

    make_sandbox()
    connector = MetaConnector(load_settings(), HttpClient(new_session(1), timeout=10, attempts=1, max_wait=0))
    old = _months_ago(38)
    with pytest.raises(FatalApiError, match=r"3018.*cannot be beyond 37 months from the current date"):
        connector.fetch(Account("meta", "1"), SyncWindow(old, old + timedelta(days=3), False), Credentials(access_token="EAABtoken"))


def test_long_ranges_of_large_accounts_go_through_async_report_runs(cli, engine, make_sandbox):
    sb = make_sandbox({"meta_accounts": {"1": {"max_sync_rows": 60}}})
    meta = add_meta(cli, account="act_1")
    report = _backfill(cli, "--since", _months_ago(4).isoformat())
    assert report["complete"]
    large = _scalar(engine, "SELECT count(*) FROM backfill_chunks WHERE rows > 60")
    assert large >= 3 and sb.count("meta.report_start", "1") == large, "each month too large for a synchronous query ran as a report"
    _assert_exact(sb, engine, meta, "meta", "1", *_range(_items(report)[meta]))


def test_dry_run_prints_chunks_requests_and_operations_and_writes_nothing(cli, engine, make_sandbox):
    sb = make_sandbox()
    add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    before = {t: _scalar(engine, f"SELECT count(*) FROM {t}") for t in TABLES}
    since = _months_ago(12).isoformat()
    shown = cli("backfill", "--since", since, "--dry-run")
    assert shown.code == 0, shown.err
    assert "to fetch" in shown.out and "Google Ads operations" in shown.out and "nothing written" in shown.out
    planned = _backfill(cli, "--since", since, "--dry-run")
    item = _items(planned)[google]
    quarters = len(item["chunks"])
    assert planned["dry_run"] and item["status"] == "planned" and 4 <= quarters <= 5
    assert item["expected_operations"] == quarters + 1, "one searchStream per quarter and the customer query"
    assert item["expected_requests"] == quarters + 2, "and the token refresh"
    assert f"{item['chunks'][0]['since']}..{item['chunks'][0]['until']}  to fetch" in shown.out
    assert sb.log == [], "nothing fetched"
    assert {t: _scalar(engine, f"SELECT count(*) FROM {t}") for t in TABLES} == before, "nothing written"


# ---------------------------------------------------------------- interruptions, other processes, cron


def test_killed_mid_way_a_rerun_finishes_without_refetching_finished_chunks(cli, engine, make_sandbox, spawn):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    since = _months_ago(24).isoformat()
    sb.hold_dates(_months_ago(12))  # chunks newer than this go through; the first older one waits, in flight
    victim = spawn("backfill", "--since", since)
    _wait_for(lambda: sb.held == 2)  # one chunk in flight per integration
    finished = _scalar(engine, "SELECT count(*) FROM backfill_chunks WHERE status = 'done'")
    assert finished > 0
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    sb.release_dates()
    _wait_for(lambda: sb.held == 0 and len(_all_spans(sb)) >= finished + 2)
    in_flight = {s for s in _all_spans(sb) if _span(s[1])[0] < _months_ago(12)}
    assert len(in_flight) == 2
    report = _backfill(cli, "--since", since)
    assert report["complete"], "the dead process's leases are broken at once on its own host"
    spans = _all_spans(sb)
    assert {s for s, n in spans.items() if n > 1} == in_flight, "only the chunks in flight at the kill are fetched again"
    assert report["chunks_fetched"] == sum(i["chunks_total"] for i in report["integrations"]) - finished
    items = _items(report)
    _assert_exact(sb, engine, meta, "meta", "1", *_range(items[meta]))
    _assert_exact(sb, engine, google, "google", "1111111111", *_range(items[google]))
    duplicates = _scalar(
        engine,
        "SELECT count(*) FROM (SELECT integration_id, campaign_id, date FROM campaign_metrics "
        "GROUP BY integration_id, campaign_id, date HAVING count(*) > 1) d",
    )
    assert duplicates == 0


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_rolls_back_the_chunk_in_flight_and_keeps_finished_ones(cli, engine, make_sandbox, spawn, sig, code):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    hold = _months_ago(3)
    sb.hold_dates(hold)
    proc = spawn("backfill", "--since", _months_ago(6).isoformat(), "--json")
    _wait_for(lambda: sb.held == 1)
    proc.send_signal(sig)
    assert proc.stderr is not None
    for line in proc.stderr:  # the handler has run once it says so; only then may the fetch in flight return
        if line.startswith("emsync: stopping"):
            break
    sb.release_dates()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    report = json.loads(out)
    assert report["interrupted"] and not report["complete"] and _items(report)[meta]["status"] == "interrupted"
    # The fetch in flight was aborted by the client; the sandbox logs the request once its hold ends.
    _wait_for(lambda: sb.held == 0 and any(_span(s)[0] < hold for s in sb.spans("meta.insights", "1")))
    held = [_span(s) for s in sb.spans("meta.insights", "1") if _span(s)[0] < hold]
    assert len(held) == 1, "nothing after the chunk in flight was started"
    lo, hi = held[0]
    assert _scalar(engine, "SELECT status FROM backfill_chunks WHERE since = :lo", lo=lo) == "pending"
    rows = stored(engine, meta)
    assert not [k for k in rows if lo <= k[1] <= hi], "the chunk in flight was rolled back"
    done = _scalar(engine, "SELECT count(*) FROM backfill_chunks WHERE status = 'done'")
    assert done == _items(report)[meta]["chunks_fetched"] > 0, "finished chunks are kept"


def test_sync_all_during_a_backfill_syncs_the_recent_window_at_once(cli, engine, make_sandbox, spawn):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    since = _months_ago(24).isoformat()
    sb.hold_dates(_months_ago(12))
    proc = spawn("backfill", "--since", since, "--json")
    _wait_for(lambda: sb.held == 2)
    result = cli("sync-all", "--json")
    assert result.code == 0, result.err
    synced = json.loads(result.out)
    assert [i["status"] for i in synced["integrations"]] == ["ok", "ok"], "a backfill never holds the integration"
    for integration_id, platform, account in ((meta, "meta", "1"), (google, "google", "1111111111")):
        lo, hi = window(sb, platform, account, 30)
        got = {k: v for k, v in values(stored(engine, integration_id)).items() if k[1] >= lo}
        assert got == quantized(expected_between(sb, platform, account, lo, hi))
    assert sb.held == 2, "meanwhile the backfill waits on its one chunk in flight, nothing else"
    sb.release_dates()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["complete"]
    _assert_exact(sb, engine, meta, "meta", "1", date.fromisoformat(since), window(sb, "meta", "1", 30)[1])
    _assert_exact(sb, engine, google, "google", "1111111111", date.fromisoformat(since), window(sb, "google", "1111111111", 30)[1])


def test_two_backfills_at_once_never_fetch_the_same_chunk(cli, engine, make_sandbox, spawn):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0  # account metadata known: both go straight to their chunks
    sb.reset_log()
    since = _months_ago(18).isoformat()
    sb.hold_dates(_months_ago(-1))  # every chunk waits until both processes hold one per integration
    procs = [spawn("backfill", "--since", since, "--json") for _ in range(2)]
    _wait_for(lambda: sb.held == 4)
    sb.release_dates()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    spans = _all_spans(sb)
    assert spans and set(spans.values()) == {1}, "each chunk fetched by one process only"
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["chunks_fetched"] for r in reports) == len(spans)
    assert _scalar(engine, "SELECT count(*) FROM backfill_chunks WHERE status <> 'done'") == 0
    _assert_exact(sb, engine, meta, "meta", "1", date.fromisoformat(since), window(sb, "meta", "1", 30)[1])
    _assert_exact(sb, engine, google, "google", "1111111111", date.fromisoformat(since), window(sb, "google", "1111111111", 30)[1])


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "args, words",
    [
        (["--since", "2025-13-01"], "--since must be a date"),
        (["--since", "2025-01-01", "--until", "last week"], "--until must be a date"),
        (["--since", "2025-02-01", "--until", "2025-01-01"], "is after --until"),
        (["--since", "0001-01-01"], "is before 2000-01-01"),
        (["--since", (date.today() + timedelta(days=3)).isoformat()], "is in the future"),
        (["--since", "2025-01-01", "--email", "a@example.com", "--integration", "1"], "not both"),
        (["--since", "2025-01-01", "--integration", "999"], "no integration with id 999"),
        (["--since", "2025-01-01", "--email", "ghost@example.com"], "no user with email ghost@example.com"),
        (["--since", "2025-01-01", "--platform", "tiktok"], "platform must be"),
    ],
)
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(cli, engine, args, words):
    add_meta(cli, account="act_1")
    result = cli("backfill", *args)
    assert result.code == 2 and words in result.err and result.err.count("\n") == 1, result.err
    assert _scalar(engine, "SELECT count(*) FROM backfills") == 0


def test_removing_an_integration_removes_its_backfill(cli, engine, make_sandbox):
    make_sandbox()
    integration_id = add_meta(cli, account="act_1")
    assert _backfill(cli, "--since", _months_ago(3).isoformat())["complete"]
    assert cli("integrations", "remove", str(integration_id), "--yes").code == 0
    assert _scalar(engine, "SELECT count(*) FROM backfills") == _scalar(engine, "SELECT count(*) FROM backfill_chunks") == 0


def test_a_disabled_integration_named_by_id_is_refused(cli, engine):
    integration_id = add_meta(cli, account="act_1")
    assert cli("integrations", "disable", str(integration_id)).code == 0
    result = cli("backfill", "--since", "2025-01-01", "--integration", str(integration_id))
    assert result.code == 2 and "is disabled" in result.err


def test_progress_per_integration_on_a_terminal_and_plain_lines_otherwise(cli, make_sandbox):
    make_sandbox()
    add_meta(cli, account="act_1")
    add_google(cli, account="1111111111")
    code, screen = on_terminal("backfill", "--since", _months_ago(8).isoformat())
    assert code == 0
    assert re.search(r"meta act_1 anna@example.com .* (\d+)/\1 .*rows", screen), screen[-2000:]
    assert re.search(r"google 111-111-1111 anna@example.com .* (\d+)/\1 .*rows", screen), screen[-2000:]
    assert "ETA" in screen and "Backfill complete" in screen
    assert "INFO" not in screen, "a terminal gets the progress display, not log lines"
    plain = cli("backfill", "--since", _months_ago(10).isoformat())
    assert plain.code == 0 and "INFO    Backfill meta anna@example.com (act_1):" in plain.err and "saved" in plain.err


def test_an_integration_that_needs_reauth_is_left_out_unless_named(cli, engine, make_sandbox):
    make_sandbox()
    healthy = add_meta(cli, account="act_1")
    expired = add_meta(cli, account="act_2", token="EAABtoken-2")
    with engine.begin() as conn:
        conn.execute(text("UPDATE integrations SET status = 'needs_reauth' WHERE id = :i"), {"i": expired})
    since = _months_ago(2).isoformat()
    items = _items(_backfill(cli, "--since", since))
    assert items[healthy]["status"] == "done"
    assert items[expired]["status"] == "skipped" and f"emsync integrations update {expired}" in items[expired]["reason"]
    named = _items(_backfill(cli, "--since", since, "--integration", str(expired)))
    assert list(named) == [expired] and named[expired]["status"] == "done", "named, it is tried (the sandbox still accepts its token)"


def test_a_key_that_cannot_decrypt_the_tokens_is_exit_2_before_anything_is_written(cli, engine, make_sandbox, monkeypatch):
    from emsync.crypto import new_key

    sb = make_sandbox()
    add_meta(cli, account="act_1")
    monkeypatch.setenv("EMSYNC_SECRET_KEY", new_key())
    result = cli("backfill", "--since", _months_ago(2).isoformat())
    assert result.code == 2 and "cannot decrypt" in result.err
    assert _scalar(engine, "SELECT count(*) FROM backfills") == 0 and sb.log == []
