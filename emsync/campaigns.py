"""The ``campaigns`` table: one row per campaign of an integration, with its current name and status, and
whether a whole answer lacked it while rows of it were stored (``vanished``).

Written inside the window-replace transaction (``campaign_rows.replace_window``), so a campaign's name in
``campaigns`` and on every stored day in ``campaign_metrics`` change together: one UPDATE per renamed
campaign. First and last day seen are not stored here: the view ``campaign_days_seen`` derives them from
``campaign_metrics``.
"""

from __future__ import annotations

import functools
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update

from .domain import SyncWindow
from .models import campaigns_t, metrics_t


def remember(conn, integration_id: int, names: dict[str, str | None], statuses: dict[str, str], now: datetime) -> int:
    """Record the campaigns an answer carried: new ones inserted; a new name, a new status or a reappearance
    updated. A new name is also written to every stored day of that campaign. Returns the campaigns renamed."""
    if not names:
        return 0
    existing = {r.campaign_id: r for r in conn.execute(_of_integration(), {"integration_id": integration_id})}
    fresh = []
    renamed = 0
    for campaign_id, name in names.items():
        status = statuses.get(campaign_id)
        old = existing.get(campaign_id)
        if old is None:
            # Every campaign with stored rows has a row here (migration 0002 filled it): no older days to rename.
            fresh.append(
                {
                    "integration_id": integration_id,
                    "campaign_id": campaign_id,
                    "name": name,
                    "status": status,
                    "vanished": False,
                    "vanished_at": None,
                    "updated_at": now,
                }
            )
            continue
        changes: dict = {}
        if name is not None and name != old.name:
            changes["name"] = name
        if status is not None and status != old.status:
            changes["status"] = status
        if old.vanished:
            changes.update(vanished=False, vanished_at=None)
        if not changes:
            continue
        changes["updated_at"] = now
        conn.execute(update(campaigns_t).where(_key(integration_id, campaign_id)).values(**changes))
        if "name" in changes:
            renamed += 1
            conn.execute(
                update(metrics_t)
                .where(
                    metrics_t.c.integration_id == integration_id,
                    metrics_t.c.campaign_id == campaign_id,
                    metrics_t.c.campaign_name.is_distinct_from(name),
                )
                .values(campaign_name=name)
            )
    if fresh:
        conn.execute(insert(campaigns_t), fresh)
    return renamed


@functools.cache
def _of_integration():
    """An integration's campaigns (built once: see ``statements``)."""
    return select(campaigns_t).where(campaigns_t.c.integration_id == bindparam("integration_id"))


def mark_vanished(conn, integration_id: int, absent: dict[str, int], window: SyncWindow, now: datetime) -> tuple[str, ...]:
    """Mark campaigns that have stored days in ``window`` but are missing from a whole answer (``absent``:
    campaign id → stored days kept). Returns one warning naming those newly missing; none for campaigns
    already marked."""
    if not absent:
        return ()
    rows = conn.execute(
        select(campaigns_t.c.campaign_id, campaigns_t.c.name, campaigns_t.c.vanished).where(
            campaigns_t.c.integration_id == integration_id, campaigns_t.c.campaign_id.in_(sorted(absent))
        )
    )
    known = {r.campaign_id: r for r in rows}
    newly = []
    for campaign_id in sorted(absent):
        old = known.get(campaign_id)
        if old is not None and old.vanished:
            continue
        if old is None:
            conn.execute(
                insert(campaigns_t).values(
                    integration_id=integration_id, campaign_id=campaign_id, vanished=True, vanished_at=now, updated_at=now
                )
            )
        else:
            conn.execute(
                update(campaigns_t).where(_key(integration_id, campaign_id)).values(vanished=True, vanished_at=now, updated_at=now)
            )
        newly.append(
            f"{campaign_id}"
            + (f" ({old.name})" if old is not None and old.name else "")
            + f": {absent[campaign_id]} day{'s' if absent[campaign_id] != 1 else ''}"
        )
    if not newly:
        return ()
    which = "a campaign" if len(newly) == 1 else f"{len(newly)} campaigns"
    shown = ", ".join(newly[:10]) + (f" and {len(newly) - 10} more" if len(newly) > 10 else "")
    return (
        f"{which} with stored rows in {window.since}..{window.until} missing from the whole answer, kept and marked vanished in "
        f"the campaigns table (deleted or archived upstream?): {shown}",
    )


def _key(integration_id: int, campaign_id: str):
    return (campaigns_t.c.integration_id == integration_id) & (campaigns_t.c.campaign_id == campaign_id)
