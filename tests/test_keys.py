"""The encryption key: never lost by `init`, checked before writes and runs, one bad token fails only its integration,
`keys check`, `keys rotate` (MultiFernet, several hosts), tokens that never go on the command line, and what
`integrations update` does with expiries and login-customer-ids."""

from __future__ import annotations

import io
import json
import os
import select
import stat
import termios
import time
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from emsync import db
from emsync.config import user_env_file
from emsync.crypto import TokenBox, new_key

from .conftest import TEST_KEY, add_google, add_meta
from .helpers import integration, spawn_on_terminal


def _ciphertexts(engine) -> dict[int, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, access_token_enc, refresh_token_enc, cached_access_token_enc FROM credentials ORDER BY id"))
        return {r[0]: tuple(r[1:]) for r in rows}


def _count(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()


def _store_under_another_key(engine, credential_id: int, token: str, column: str = "access_token_enc") -> None:
    """As if that credential's token had been stored with a key that is lost now."""
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE credentials SET {column} = :b WHERE id = :i"), {"b": TokenBox(new_key()).encrypt(token), "i": credential_id}
        )


# ---------------------------------------------------------------- init and a missing key


def test_init_never_makes_a_key_beside_stored_tokens_and_other_commands_say_restore_it(cli, db_url, engine, monkeypatch):
    add_meta(cli, account="act_1")
    add_google(cli)
    monkeypatch.delenv("EMSYNC_SECRET_KEY")
    result = cli("init")
    assert result.code == 2
    assert "holds 2 encrypted tokens" in result.err and "restore the key" in result.err and "backup" in result.err
    assert not user_env_file().exists(), "no new key written beside tokens it could never read"
    for args in (("sync-all",), ("integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", "act_9")):
        refused = cli(*args)
        assert refused.code == 2 and "holds 2 encrypted tokens" in refused.err and "restore the key" in refused.err, args
        assert "run 'emsync init'" not in refused.err, args
    assert _count(engine, "integrations") == 2 and _count(engine, "sync_runs") == 0


def test_a_missing_key_without_tokens_still_says_run_init(cli, db_url, monkeypatch):
    monkeypatch.delenv("EMSYNC_SECRET_KEY")
    assert cli("users", "add", "anna@example.com").code == 0
    result = cli(
        "integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", "act_1", "--access-token", "EAABx"
    )
    assert result.code == 2 and "run 'emsync init'" in result.err


def _database_at(url: str, revision: str):
    engine = db.make_engine(url, create=True)
    cfg = Config()
    cfg.set_main_option("script_location", "emsync:migrations")
    with db.write_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.execute(text("INSERT INTO users (id, email, created_at) VALUES (1, 'anna@example.com', '2026-11-01 08:00:00+00:00')"))
    return engine


PREVIOUS = db.REVISIONS[-2]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_init_copies_a_sqlite_database_holding_data_before_migrating_it(cli, empty_db_url, monkeypatch, backend):
    monkeypatch.setenv("EMSYNC_DATABASE_URL", empty_db_url)
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    engine = _database_at(empty_db_url, PREVIOUS)
    engine.dispose()
    path = db.sqlite_path(empty_db_url)
    result = cli("init")
    assert result.code == 0, result.err
    copy = path.with_name(f"{path.name}.bak-{PREVIOUS}")
    assert str(copy) in result.out and f"from {PREVIOUS} to {db.HEAD}" in result.out
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    old = db.make_engine(f"sqlite:///{copy}")
    with old.connect() as conn:
        assert db.current_revision(conn) == PREVIOUS
        assert conn.execute(text("SELECT email FROM users")).scalar() == "anna@example.com"
    old.dispose()
    assert cli("init").code == 0 and not path.with_name(f"{path.name}.bak-{db.HEAD}").exists(), "up to date: no copy"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_init_makes_no_copy_of_a_new_or_empty_database(cli, empty_db_url, monkeypatch, backend):
    monkeypatch.setenv("EMSYNC_DATABASE_URL", empty_db_url)
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    assert cli("init").code == 0
    path = db.sqlite_path(empty_db_url)
    assert [p.name for p in path.parent.iterdir() if ".bak-" in p.name] == []


@pytest.mark.parametrize("backend", ["postgres"])
def test_init_on_postgres_with_data_prints_the_pg_dump_line_and_wants_yes(cli, empty_db_url, monkeypatch, backend):
    url = empty_db_url.replace("postgres@", "postgres:s3cret-pw@", 1) if "@" in empty_db_url else empty_db_url
    monkeypatch.setenv("EMSYNC_DATABASE_URL", url)
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    engine = _database_at(empty_db_url, PREVIOUS)
    refused = cli("init")
    assert refused.code == 2 and "--yes" in refused.err
    assert "pg_dump --format=custom" in refused.out and "s3cret-pw" not in refused.out + refused.err
    with engine.connect() as conn:
        assert db.current_revision(conn) == PREVIOUS, "nothing migrated without confirmation"
    done = cli("init", "--yes")
    assert done.code == 0, done.err
    assert "pg_dump" in done.out and f"from {PREVIOUS} to {db.HEAD}" in done.out
    engine.dispose()


# ---------------------------------------------------------------- writes verify the key first


def test_add_update_and_connect_refuse_a_key_that_decrypts_no_stored_token(cli, engine, make_sandbox, monkeypatch):
    sb = make_sandbox()
    meta_id = add_meta(cli, account="act_1")
    before = _ciphertexts(engine)
    monkeypatch.setenv("EMSYNC_SECRET_KEY", new_key())
    added = cli(
        "integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", "act_2", "--access-token", "EAABt2"
    )
    assert added.code == 2 and "cannot decrypt any of the 1 stored tokens" in added.err
    updated = cli("integrations", "update", str(meta_id), "--access-token", "EAABnew")
    assert updated.code == 2 and "cannot decrypt any of the 1 stored tokens" in updated.err
    monkeypatch.setattr("sys.stdin", io.StringIO("EAABconnect-token\n"))
    connected = cli("connect", "meta", "--email", "anna@example.com", "--all")
    assert connected.code == 2 and "cannot decrypt" in connected.err
    assert _ciphertexts(engine) == before and _count(engine, "integrations") == 1
    assert sb.log == [], "refused before asking Meta anything"


def test_one_token_under_a_lost_key_fails_only_its_integration_and_update_fixes_it(cli, engine, make_sandbox):
    make_sandbox()
    lost = add_meta(cli, "anna@example.com", "act_1", "EAABtoken-one")  # credential 1: the first any check would pick
    fine = add_meta(cli, "bob@example.com", "act_2", "EAABtoken-two")
    _store_under_another_key(engine, 1, "EAABtoken-one")
    result = cli("sync-all")
    assert result.code == 1, result.err
    assert integration(cli, fine)["status"] == "ok"
    failed = integration(cli, lost)
    assert failed["status"] == "error" and "credential 1" in failed["last_error"]
    assert f"emsync integrations update {lost} --access-token -" in failed["last_error"]
    assert "act_1" in result.text and "credential 1" in result.text

    # the key still decrypts the others: adding and fixing are allowed
    add_meta(cli, "bob@example.com", "act_3", "EAABtoken-three")
    assert cli("integrations", "update", str(lost), "--access-token", "EAABtoken-one").code == 0
    assert cli("sync-all", "--force").code == 0
    assert integration(cli, lost)["status"] == "ok"


def test_a_backfill_is_not_refused_for_one_token_under_a_lost_key(cli, engine, make_sandbox):
    make_sandbox()
    add_meta(cli, "anna@example.com", "act_1", "EAABtoken-one")
    add_meta(cli, "bob@example.com", "act_2", "EAABtoken-two")
    _store_under_another_key(engine, 1, "EAABtoken-one")
    since = (datetime.now(UTC).date() - timedelta(days=45)).isoformat()
    result = cli("backfill", "--since", since, "--json")
    items = {i["id"]: i for i in json.loads(result.out)["integrations"]}
    assert items[2]["status"] == "done", result.err
    assert items[1]["status"] != "done"


# ---------------------------------------------------------------- keys check / keys rotate


def test_keys_check_names_each_token_that_does_not_decrypt_with_its_fix(cli, engine):
    add_meta(cli, "anna@example.com", "act_1", "EAABtoken-one")
    google = add_google(cli, "bob@example.com")
    ok = cli("keys", "check")
    assert ok.code == 0 and "2 of 2 stored tokens" in ok.out and "problem" not in ok.out
    _store_under_another_key(engine, 2, "1//refresh", column="refresh_token_enc")
    bad = cli("keys", "check")
    assert bad.code == 1 and "1 of 2 stored tokens" in bad.out
    assert f"emsync integrations update {google} --refresh-token -" in bad.out
    report = json.loads(cli("keys", "check", "--json").out)
    assert report["readable"] == 1 and [u["credential_id"] for u in report["unreadable"]] == [2]


def test_rotate_with_the_key_in_an_env_file_writes_new_old_there_then_reencrypts(cli, engine, make_sandbox, monkeypatch, tmp_path):
    make_sandbox()
    meta = add_meta(cli, "anna@example.com", "act_1", "EAABtoken-one")
    add_google(cli, "anna@example.com", "123-456-7890", "1//refresh-one")
    env_file = tmp_path / "emsync.env"
    env_file.write_text(f"EMSYNC_CONCURRENCY=2\nEMSYNC_SECRET_KEY={TEST_KEY}\n")
    monkeypatch.delenv("EMSYNC_SECRET_KEY")
    monkeypatch.setenv("EMSYNC_ENV_FILE", str(env_file))
    before = _ciphertexts(engine)
    result = cli("keys", "rotate")
    assert result.code == 0, result.err
    written = env_file.read_text()
    assert written.startswith("EMSYNC_CONCURRENCY=2\n") and stat.S_IMODE(env_file.stat().st_mode) == 0o600
    value = written.split("EMSYNC_SECRET_KEY=")[1].strip()
    new, old = value.split(",")
    assert old == TEST_KEY and new != TEST_KEY
    assert new not in result.text and TEST_KEY not in result.text, "keys never printed"
    assert "Re-encrypted 2 tokens" in result.out
    after = _ciphertexts(engine)
    assert after != before
    assert TokenBox(new).decrypt(after[1][0]) == "EAABtoken-one" and TokenBox(new).decrypt(after[2][1]) == "1//refresh-one"
    check = cli("keys", "check")
    assert check.code == 0 and "other keys can be removed" in check.out
    assert f"set in {env_file} line" in check.out, "says which file holds the key"
    assert cli("sync-all").code == 0 and integration(cli, meta)["status"] == "ok"


def test_rotate_with_the_key_in_the_environment_prints_what_to_set_then_rotates_with_new_old(cli, engine, monkeypatch):
    add_meta(cli, "anna@example.com", "act_1", "EAABtoken-one")
    before = _ciphertexts(engine)
    first = cli("keys", "rotate")
    assert first.code == 0 and "EMSYNC_SECRET_KEY=" in first.out and "run 'emsync keys rotate' again" in first.out
    assert _ciphertexts(engine) == before, "nothing re-encrypted under a key that is stored nowhere"
    new = first.out.split("EMSYNC_SECRET_KEY=")[1].split(",")[0]
    assert TEST_KEY not in first.out
    monkeypatch.setenv("EMSYNC_SECRET_KEY", f"{new},{TEST_KEY}")
    check = cli("keys", "check")
    assert check.code == 0 and "1 token encrypted with a key of EMSYNC_SECRET_KEY other than the first" in check.out
    assert "can be removed" not in check.out
    second = cli("keys", "rotate")
    assert second.code == 0 and "Re-encrypted 1 tokens" in second.out
    assert TokenBox(new).decrypt(_ciphertexts(engine)[1][0]) == "EAABtoken-one"
    assert "other keys can be removed" in cli("keys", "check").out
    again = cli("keys", "rotate")
    assert "Re-encrypted 0 tokens" in again.out and "1 already were" in again.out
    # A host still holding OLD,NEW after another rotated to NEW: told to put NEW first, never to rotate back.
    monkeypatch.setenv("EMSYNC_SECRET_KEY", f"{TEST_KEY},{new}")
    behind = cli("keys", "check").out
    assert "If that key is the new one (another host ran 'emsync keys rotate'), put it first here" in behind
    assert "can be removed" not in behind


def test_rotate_leaves_a_token_no_key_decrypts_and_says_so(cli, engine, monkeypatch):
    add_meta(cli, "anna@example.com", "act_1", "EAABtoken-one")
    lost = add_meta(cli, "bob@example.com", "act_2", "EAABtoken-two")
    _store_under_another_key(engine, 2, "EAABtoken-two")
    unreadable = _ciphertexts(engine)[2]
    new = new_key()
    monkeypatch.setenv("EMSYNC_SECRET_KEY", f"{new},{TEST_KEY}")
    result = cli("keys", "rotate")
    assert result.code == 1 and "Re-encrypted 1 tokens" in result.out
    assert f"emsync integrations update {lost} --access-token -" in result.out
    assert _ciphertexts(engine)[2] == unreadable
    assert TokenBox(new).decrypt(_ciphertexts(engine)[1][0]) == "EAABtoken-one"


def test_a_host_with_new_old_never_reencrypts_an_unchanged_token_so_a_host_with_old_keeps_working(cli, engine, make_sandbox, monkeypatch):
    make_sandbox()
    meta = add_meta(cli, "anna@example.com", "act_1", "EAABtoken-one")
    before = _ciphertexts(engine)[1][0]
    monkeypatch.setenv("EMSYNC_SECRET_KEY", f"{new_key()},{TEST_KEY}")
    assert cli("sync-all").code == 0
    with engine.connect() as conn:
        checked, blob = conn.execute(text("SELECT token_checked_at, access_token_enc FROM credentials WHERE id = 1")).one()
    assert checked is not None, "the sync saved what debug_token said about the credential"
    assert blob == before, "the unchanged token keeps the ciphertext the old key reads"
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)  # the other host, not yet given the new key
    assert cli("sync-all", "--force").code == 0 and integration(cli, meta)["status"] == "ok"


def test_a_cached_access_token_no_key_decrypts_is_just_refreshed(cli, engine, make_sandbox):
    sb = make_sandbox()
    google = add_google(cli)
    assert cli("sync-all").code == 0
    _store_under_another_key(engine, 1, "ya29.cached-by-a-host-with-a-newer-key", column="cached_access_token_enc")
    sb.reset_log()
    assert cli("sync-all", "--force").code == 0
    assert integration(cli, google)["status"] == "ok" and sb.count("google.token") == 1


def test_a_secret_key_list_is_validated_key_by_key(cli, db_url, monkeypatch):
    monkeypatch.setenv("EMSYNC_SECRET_KEY", f"{TEST_KEY},not-a-key")
    result = cli("keys", "check")
    assert result.code == 2 and "key 2 of 2 in EMSYNC_SECRET_KEY is not a valid key" in result.err
    assert TEST_KEY not in result.err


# ---------------------------------------------------------------- tokens off the command line


def test_tokens_are_read_from_standard_input_with_a_dash(cli, engine, monkeypatch):
    assert cli("users", "add", "anna@example.com").code == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("EAABfrom-stdin\n"))
    added = cli("integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", "act_1", "--access-token", "-")
    assert added.code == 0, added.err
    google = add_google(cli)
    monkeypatch.setattr("sys.stdin", io.StringIO("1//refresh-from-stdin"))
    assert cli("integrations", "update", str(google), "--refresh-token", "-").code == 0
    box = TokenBox(TEST_KEY)
    cipher = _ciphertexts(engine)
    assert box.decrypt(cipher[1][0]) == "EAABfrom-stdin" and box.decrypt(cipher[2][1]) == "1//refresh-from-stdin"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    empty = cli("integrations", "update", str(google), "--refresh-token", "-")
    assert empty.code == 2 and "must not be empty" in empty.err


def _type_at_prompt(args: list[str], prompt: bytes, answer: bytes) -> tuple[int, str]:
    """Run `emsync ARGS` on a pseudo-terminal of its own (no controlling terminal), type ``answer`` after ``prompt``."""
    primary, proc = spawn_on_terminal(*args, start_new_session=True)
    screen, typed = b"", False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.05)
        if not typed and prompt in screen and not termios.tcgetattr(primary)[3] & termios.ECHO:
            os.write(primary, answer)  # only once echo is off: getpass flushes what was typed before
            typed = True
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(primary, 65536)
        except OSError:
            break
        if not data:
            break
        screen += data
    if proc.poll() is None:  # still waiting for input after a minute: it asked for something nobody types
        proc.kill()
    proc.wait(timeout=60)
    os.close(primary)
    return proc.returncode, screen.decode("utf-8", "replace")


def test_integrations_add_asks_for_a_missing_token_on_a_terminal_without_echo(cli, engine):
    assert cli("users", "add", "anna@example.com").code == 0
    args = ["integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", "act_1"]
    code, screen = _type_at_prompt(args, b"Meta access token", b"EAABtyped-at-the-prompt\n")
    assert code == 0, screen
    assert "Added meta integration 1" in screen and "EAABtyped-at-the-prompt" not in screen, "typed without echo"
    assert TokenBox(TEST_KEY).decrypt(_ciphertexts(engine)[1][0]) == "EAABtyped-at-the-prompt"


def test_update_with_only_an_expiry_never_prompts_even_on_a_terminal(cli, engine):
    meta = add_meta(cli)
    later = (datetime.now(UTC) + timedelta(days=40)).date().isoformat()
    code, screen = _type_at_prompt(["integrations", "update", str(meta), "--token-expires-at", later], b"\x00", b"")  # types nothing
    assert code == 0, screen
    assert "token" not in screen.lower().split("updated")[0], screen
    assert integration(cli, meta)["token_expires_at"].startswith(later)


# ---------------------------------------------------------------- integrations update: expiry and login-customer-id


def test_a_token_expiry_in_the_past_is_refused(cli, engine):
    assert cli("users", "add", "anna@example.com").code == 0
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    args = ("--email", "anna@example.com", "--platform", "meta", "--account-id", "act_1", "--access-token", "EAABt")
    added = cli("integrations", "add", *args, "--token-expires-at", past)
    assert added.code == 2 and "in the past" in added.err and _count(engine, "integrations") == 0
    meta = add_meta(cli)
    updated = cli("integrations", "update", str(meta), "--token-expires-at", past)
    assert updated.code == 2 and "in the past" in updated.err
    assert integration(cli, meta)["token_expires_at"] is None


def test_login_customer_id_is_listed_and_an_empty_one_removes_it(cli, engine):
    google = add_google(cli, "anna@example.com", "123-456-7890", "1//refresh", "--login-customer-id", "111-222-3333")
    assert "via 111-222-3333" in cli("integrations", "list").out
    result = cli("integrations", "update", str(google), "--login-customer-id", "")
    assert result.code == 0, result.err
    assert integration(cli, google)["login_customer_id"] is None
    assert "via" not in cli("integrations", "list").out


def test_a_new_token_without_an_expiry_asks_meta_and_the_same_token_keeps_its_expiry(cli, engine, make_sandbox, monkeypatch):
    meta_expiry = int((datetime.now(UTC) + timedelta(days=55)).timestamp())
    sb = make_sandbox({"meta_tokens": {"EAABnew-token": {"expires_at": meta_expiry, "user_id": "10000000000001"}}})
    later = (datetime.now(UTC) + timedelta(days=20)).replace(microsecond=0)
    meta = add_meta(cli, "anna@example.com", "act_1", "EAABold-token", "--token-expires-at", later.isoformat())

    same = cli("integrations", "update", str(meta), "--access-token", "EAABold-token")
    assert same.code == 0, same.err
    assert datetime.fromisoformat(integration(cli, meta)["token_expires_at"]) == later, "the same token keeps its expiry"
    assert sb.count("meta.debug_token") == 0

    new = cli("integrations", "update", str(meta), "--access-token", "EAABnew-token")
    assert new.code == 0, new.err
    assert sb.count("meta.debug_token") == 1
    assert datetime.fromisoformat(integration(cli, meta)["token_expires_at"]) == datetime.fromtimestamp(meta_expiry, UTC)

    monkeypatch.delenv("META_APP_ID")
    monkeypatch.delenv("META_APP_SECRET")
    unknown = cli("integrations", "update", str(meta), "--access-token", "EAABthird-token")
    assert unknown.code == 0 and "expiry is unknown" in unknown.out
    assert integration(cli, meta)["token_expires_at"] is None and sb.count("meta.debug_token") == 1


def test_a_new_token_meta_says_is_invalid_is_refused_and_nothing_written(cli, engine, make_sandbox):
    make_sandbox({"meta_revoked_tokens": ["EAABrevoked-token"]})
    meta = add_meta(cli, "anna@example.com", "act_1", "EAABold-token")
    before = _ciphertexts(engine)
    result = cli("integrations", "update", str(meta), "--access-token", "EAABrevoked-token")
    assert result.code == 2 and "not valid" in result.err
    assert _ciphertexts(engine) == before


def test_integrations_check_gives_the_fix_for_a_token_under_a_lost_key(cli, engine, make_sandbox):
    make_sandbox()
    lost = add_meta(cli, "anna@example.com", "act_1", "EAABtoken-one")
    fine = add_meta(cli, "bob@example.com", "act_2", "EAABtoken-two")
    _store_under_another_key(engine, 1, "EAABtoken-one")
    result = cli("integrations", "check", "--all", "--json")
    checks = {c["id"]: c for c in json.loads(result.out)}
    assert result.code == 1 and checks[fine]["ok"] is True
    assert checks[lost]["ok"] is False and f"emsync integrations update {lost} --access-token -" in checks[lost]["fix"]


def test_a_google_credential_whose_token_no_key_decrypts_can_still_be_removed(cli, engine, make_sandbox):
    sb = make_sandbox()
    add_meta(cli, "anna@example.com", "act_1", "EAABtoken-one")
    add_google(cli, "bob@example.com")
    _store_under_another_key(engine, 2, "1//refresh-lost", column="refresh_token_enc")
    result = cli("credentials", "remove", "2", "--with-integrations", "--yes")
    assert result.code == 0, result.err
    assert "not revoked at Google" in result.out and sb.count("google.revoke") == 0
    assert _count(engine, "credentials") == 1
