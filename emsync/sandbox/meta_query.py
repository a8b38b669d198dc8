"""Which attribution a sandbox Meta insights query asks (``use_unified_attribution_setting``,
``action_attribution_windows``), and the purchases each attribution counts."""

from __future__ import annotations

import json

WINDOWS = ("1d_click", "7d_click", "28d_click", "1d_view", "1d_ev")


def attribution_asked(params: dict) -> tuple[str, ...] | str:
    """What attribution a query asked for: "unified", a tuple of windows, or "default" (the account's default)."""
    if params.get("use_unified_attribution_setting") == "true":
        return "unified"
    raw = params.get("action_attribution_windows")
    if raw:
        try:
            windows = json.loads(raw)
        except ValueError:
            windows = raw.split(",")
        return tuple(w for w in windows if isinstance(w, str))
    return "default"


def attributed(purchases: int, account: dict) -> dict[str, int]:
    """Purchases per attribution window for an account whose ad sets use ``ad_set_attribution`` (e.g. 1d_click):
    each window counts differently, so a query's attribution changes its numbers. Without it, all equal."""
    if not account.get("ad_set_attribution"):
        return dict.fromkeys((*WINDOWS, "unified", "default"), purchases)
    p = purchases
    counts = {"1d_click": p, "7d_click": p + p // 2, "28d_click": 2 * p, "1d_view": p // 3 + 1 if p else 0, "1d_ev": 0}
    counts["unified"] = counts[account["ad_set_attribution"]]
    counts["default"] = counts["7d_click"] + counts["1d_view"]  # the account default: 7-day click and 1-day view
    return counts


def action(action_type: str, amount: int, counts: dict[str, int], attribution, scale) -> dict:
    """One action with its ``value`` in the asked attribution, plus a key per window the query listed."""
    key = attribution if isinstance(attribution, str) else "default"
    item = {"action_type": action_type, "value": scale(counts[key] if amount else 0)}
    if not isinstance(attribution, str):
        for window in attribution:
            if window in counts:
                item[window] = scale(counts[window] if amount else 0)
    return item
