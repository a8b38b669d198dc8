"""Every API fault, per platform, in one run with healthy integrations beside it.

For each: the exit code, the integration's status and last_error, the healthy
integrations' rows exact, and the failing integration's previous rows intact
(its account restates after the baseline, so a partial write would show).
"""

from __future__ import annotations

import pytest

from ..conftest import add_google, add_meta
from ..helpers import expected, integration, quantized, stored, values

pytestmark = pytest.mark.usefixtures("any_db")

META_TOKEN = "EAABtarget-token"
GOOGLE_TOKEN = "1//target-refresh"

# (platform, fault or special, exit code, status, words in last_error)
CASES = [
    ("meta", {"kind": "rate_limit", "code": 17, "times": 1}, 0, "ok", None),
    ("meta", {"kind": "rate_limit", "code": 80004, "eta_minutes": 45}, 1, "rate_limited", "too many calls"),
    ("meta", {"kind": "server_error", "times": 1}, 0, "ok", None),
    ("meta", {"kind": "server_error"}, 1, "error", "Meta error 2"),
    ("meta", {"kind": "page_error", "page": 2}, 1, "error", "Meta error 2"),
    ("meta", {"kind": "slow", "seconds": 1.2}, 1, "error", "no answer within"),
    ("meta", {"kind": "truncated"}, 1, "error", "not complete JSON"),
    ("meta", {"kind": "drop"}, 1, "error", "connection to 127.0.0.1"),
    ("meta", "revoke", 1, "needs_reauth", "190/460"),
    ("meta", {"kind": "permission"}, 1, "needs_reauth", "(#200)"),
    ("google", {"kind": "rate_limit", "retry_seconds": 2, "times": 1}, 0, "ok", None),
    ("google", {"kind": "quota_exhausted"}, 1, "rate_limited", "RESOURCE_EXHAUSTED"),
    ("google", {"kind": "server_error", "status": 503, "times": 1}, 0, "ok", None),
    ("google", {"kind": "server_error", "status": 500}, 1, "error", "INTERNAL"),
    ("google", {"kind": "slow", "seconds": 1.2}, 1, "error", "no answer within"),
    ("google", {"kind": "truncated"}, 1, "error", "not complete JSON"),
    ("google", {"kind": "drop"}, 1, "error", "connection to 127.0.0.1"),
    ("google", "revoke", 1, "needs_reauth", "invalid_grant"),
    ("google", {"kind": "permission_denied"}, 1, "error", "USER_PERMISSION_DENIED"),
    ("google", {"kind": "not_enabled"}, 1, "error", "CUSTOMER_NOT_ENABLED"),
]


def _id(case):
    platform, fault, *_ = case
    kind = fault if isinstance(fault, str) else fault["kind"] + ("-once" if fault.get("times") else "")
    return f"{platform}-{kind}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_fault_beside_healthy_integrations(case, cli, engine, make_sandbox, monkeypatch, waits):
    platform, fault, exit_code, status, words = case
    monkeypatch.setenv("EMSYNC_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("EMSYNC_HTTP_TIMEOUT", "0.5")
    target_account = "9" if platform == "meta" else "9999999999"
    sb = make_sandbox({"meta_accounts": {"9": {"campaigns": 40}}, "google_customers": {"9999999999": {"campaigns": 6}}})
    healthy = {("meta", "1"): add_meta(cli, account="act_1"), ("google", "1111111111"): add_google(cli, account="1111111111")}
    if platform == "meta":
        target = add_meta(cli, "anna@example.com", "act_9", META_TOKEN)
    else:
        target = add_google(cli, "anna@example.com", "9999999999", GOOGLE_TOKEN)
    assert cli("sync-all").code == 0
    before = values(stored(engine, target))
    assert before == quantized(expected(sb, platform, target_account))

    sb.set_account(platform, target_account, restate=True, faults=[] if isinstance(fault, str) else [fault])
    sb.next_call(platform, target_account, "restate")  # the next answer is restatement 1, different from the baseline
    if fault == "revoke":
        sb.scenario["meta_revoked_tokens" if platform == "meta" else "revoked_refresh_tokens"].append(
            META_TOKEN if platform == "meta" else GOOGLE_TOKEN
        )
    result = cli("sync-all", "--full")

    assert result.code == exit_code, result.err
    item = integration(cli, target)
    assert item["status"] == status
    if words:
        assert words in item["last_error"]
        assert values(stored(engine, target)) == before, "a failed sync must leave the previous rows as they were"
    else:
        assert item["last_error"] is None
        assert values(stored(engine, target)) != before, "the restated window was written"
    for (p, account), integration_id in healthy.items():
        assert values(stored(engine, integration_id)) == quantized(expected(sb, p, account)), (p, account)
        assert integration(cli, integration_id)["status"] == "ok"
    assert all(w <= 60 for w in waits)
