"""`emsync demo`: the whole job on the embedded default, offline, in a throwaway directory."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from ..config import Settings
from ..crypto import TokenBox, new_key

USERS = (("anna@example.com", "Anna Nowak"), ("agency@example.com", "Agency Ops"))
# (email, platform, account id, token, extra); one Meta token is revoked so the status shows a failure.
INTEGRATIONS: tuple[tuple[str, str, str, str, dict[str, str]], ...] = (
    ("anna@example.com", "meta", "act_1010101", "EAADemoAnnaToken", {}),
    ("anna@example.com", "google", "123-456-7890", "1//demo-anna-refresh", {}),
    ("agency@example.com", "meta", "act_2020202", "EAADemoPixelOnlyToken", {}),
    ("agency@example.com", "meta", "act_3030303", "EAADemoRevokedToken", {}),
    ("agency@example.com", "google", "987-654-3210", "1//demo-agency-refresh", {"login_customer_id": "555-000-1111"}),
)
SCENARIO = {
    "campaigns": 6,
    "meta_accounts": {"2020202": {"conversions": "pixel_only", "currency": "EUR", "timezone": "Europe/Berlin"}},
    "google_customers": {"9876543210": {"manager": "5550001111", "currency": "USD", "timezone": "America/New_York"}},
    "meta_revoked_tokens": ["EAADemoRevokedToken"],
}


def run_demo(*, keep: bool = False) -> int:
    from rich.console import Console

    from .. import db, store
    from ..report import build_status
    from ..sandbox import Sandbox
    from .render import print_status
    from .sync import run_with_output

    console = Console() if sys.stdout.isatty() else Console(width=200)
    workdir = Path(tempfile.mkdtemp(prefix="emsync-demo-"))
    database = workdir / "demo.db"
    try:
        with Sandbox(SCENARIO) as sandbox:
            env = sandbox.env()
            settings = Settings(
                database_url=f"sqlite:///{database}",
                secret_key=new_key(),
                concurrency=4,
                http_timeout=10,
                retry_attempts=2,
                retry_max_wait=2,
                meta_graph_url=env["META_GRAPH_URL"],
                meta_app_id=env["META_APP_ID"],
                meta_app_secret=env["META_APP_SECRET"],
                google_ads_api_url=env["GOOGLE_ADS_API_URL"],
                google_oauth_token_url=env["GOOGLE_OAUTH_TOKEN_URL"],
                google_oauth_client_id=env["GOOGLE_OAUTH_CLIENT_ID"],
                google_oauth_client_secret=env["GOOGLE_OAUTH_CLIENT_SECRET"],
            )
            engine = db.make_engine(settings.database_url, create=True)
            db.upgrade(engine, settings.database_url)
            box = TokenBox(settings.require_secret_key())
            with db.write_transaction(engine) as conn:
                for email, name in USERS:
                    store.add_user(conn, email, name)
                for email, platform, account, token, extra in INTEGRATIONS:
                    store.add_integration(
                        conn,
                        box,
                        email=email,
                        platform=platform,
                        account_id=account,
                        access_token=token if platform == "meta" else None,
                        refresh_token=token if platform == "google" else None,
                        login_customer_id=extra.get("login_customer_id"),
                    )
            console.print(f"[bold]emsync demo[/]: sandbox APIs on {sandbox.url}, database {database}\n")
            run_with_output(settings, engine, verbose=False, trigger="demo")
            with engine.begin() as conn:
                report = build_status(conn, settings)
            engine.dispose()
        console.print()
        print_status(console, report)
        console.print(
            "\nOne Meta integration shows [bold red]needs_reauth[/]: its token was revoked, which is what a real failure looks like.\n"
            "Next steps for real accounts: [bold]emsync init[/], [bold]emsync connect google --email EMAIL[/] or "
            "[bold]emsync connect meta --email EMAIL[/], then cron (see crontab.example)."
        )
        if keep:
            # Its tokens are encrypted with the demo's own key: keep that too, in a private env file (never printed),
            # so that emsync itself can read the kept database.
            from ..envfile import quote
            from ..files import atomic_write

            env_file = workdir / "demo.env"
            atomic_write(
                env_file, f"EMSYNC_DATABASE_URL={quote(settings.database_url)}\nEMSYNC_SECRET_KEY={quote(settings.secret_key or '')}\n"
            )
            console.print(f"\nThe demo database is kept at {database}  (try: sqlite3 {database} 'select * from campaign_metrics limit 5')")
            console.print(f"Its settings and key are in {env_file} (0600): emsync --env-file {env_file} status")
        else:
            console.print("\nThe demo database was temporary and is removed now (use --keep to keep it).")
        return 0
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
