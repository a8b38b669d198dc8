"""Tables on an 80-column terminal: an email or an account id is never broken mid-word; less important columns are
dropped or folded instead, and a failure keeps the part that says what to do."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from emsync import store
from emsync.cli import render
from emsync.config import load_settings
from emsync.report import build_status

from .conftest import add_google, add_meta

pytestmark = pytest.mark.usefixtures("any_db")

LONG_EMAIL = "anna.kowalska-nowak@marketing-agency.example.com"
EMAILS = (LONG_EMAIL, "bob@example.com")
ACCOUNTS = ("act_123456789012345", "123-456-7890")


def _console(width: int) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, force_terminal=False, color_system=None), out


def _setup(cli, make_sandbox):
    make_sandbox({"meta_accounts": {"123456789012345": {"faults": [{"kind": "token_expired"}]}}})
    failing = add_meta(cli, LONG_EMAIL, "act_123456789012345", "EAABtoken-long")
    add_google(cli, "bob@example.com", "123-456-7890", "1//bob")
    cli("users", "add", "carol.with.a.rather.long.address@subsidiary.example.org", "--name", "Carol Ann Marie Longname-Example")
    assert cli("sync-all").code == 1
    return failing


def _engine():
    from emsync import db

    settings = load_settings()
    return settings, db.make_engine(settings.database_url)


def _whole_on_a_line(text: str, words, width: int = 80) -> None:
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    for word in words:
        assert any(word in line for line in lines), f"{word!r} is broken or missing:\n{text}"


@pytest.mark.parametrize("width", [80, 100])
def test_status_never_breaks_an_email_or_account_id(cli, make_sandbox, width):
    failing = _setup(cli, make_sandbox)
    settings, engine = _engine()
    with engine.begin() as conn:
        report = build_status(conn, settings)
    engine.dispose()
    console, out = _console(width)
    render.print_status(console, report)
    text = out.getvalue()
    _whole_on_a_line(text, (*EMAILS, *ACCOUNTS), width)
    flat = " ".join(text.split())
    assert f"emsync integrations update {failing}" in flat or "emsync connect meta" in flat, "the failure says what to do:\n" + text
    assert "needs_reauth" in text


def test_integrations_list_and_users_fit_80_columns(cli, make_sandbox):
    _setup(cli, make_sandbox)
    settings, engine = _engine()
    with engine.begin() as conn:
        rows = store.list_integrations(conn)
        users = store.list_users(conn)
    engine.dispose()
    console, out = _console(80)
    render.print_integration_list(console, rows)
    listing = out.getvalue()
    _whole_on_a_line(listing, (*EMAILS, *ACCOUNTS))
    assert "Meta error 190" in " ".join(listing.split()), "the error is shown below the table when its column does not fit"
    console, out = _console(80)
    render.print_users(console, users)
    _whole_on_a_line(out.getvalue(), (*EMAILS, "carol.with.a.rather.long.address@subsidiary.example.org"))


def test_a_wide_terminal_keeps_every_column(cli, make_sandbox):
    _setup(cli, make_sandbox)
    settings, engine = _engine()
    with engine.begin() as conn:
        rows = store.list_integrations(conn)
    engine.dispose()
    console, out = _console(240)
    render.print_integration_list(console, rows)
    header = next(line for line in out.getvalue().splitlines() if "platform" in line)
    assert re.search(r"id.*user.*account.*platform.*cred.*active.*status.*last sync.*token expires.*last error", header), header


def test_failure_text_keeps_the_end_where_emsync_says_what_to_do():
    message = (
        "Meta error 190/463: " + "Error validating access token: the session has expired. " * 10 + "Run 'emsync integrations update 3'"
    )
    short = render.failure_text(message, limit=120)
    assert len(short) <= 125 and short.startswith("Meta error 190/463:") and short.endswith("Run 'emsync integrations update 3'")


def test_a_very_long_email_at_80_columns_still_shows_the_id_and_the_status(cli, make_sandbox):
    very_long = "averyveryverylongname.person@subdomain.example-company.com"  # 58 characters
    make_sandbox()
    integration_id = add_meta(cli, very_long, "act_123456789012345", "EAABtoken-very-long")
    settings, engine = _engine()
    with engine.begin() as conn:
        rows = store.list_integrations(conn)
        report = build_status(conn, settings)
    engine.dispose()
    for show in (lambda c: render.print_integration_list(c, rows), lambda c: render.print_status(c, report)):
        console, out = _console(80)
        show(console)
        text = out.getvalue()
        _whole_on_a_line(text, (very_long, "act_123456789012345", "never_synced"))
        assert any(re.match(rf"^\W*{integration_id}\W", line) for line in text.splitlines()), f"the id is shown:\n{text}"
