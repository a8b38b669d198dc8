"""`emsync demo` and `emsync sandbox` as a user runs them: separate processes, a fresh HOME."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import requests

from emsync.config import SETTING_NAMES


def _fresh_env(tmp_path) -> dict:
    home = tmp_path / "fresh-home"
    home.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES and not k.startswith("XDG_")}
    return {**env, "HOME": str(home), "TMPDIR": str(tmp)}


def _files(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_demo_runs_offline_in_a_fresh_home_and_leaves_nothing(tmp_path):
    env = _fresh_env(tmp_path)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = subprocess.run([sys.executable, "-m", "emsync", "demo"], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Sync completed: 4 success, 1 failed" in result.stderr
    assert "needs_reauth" in result.stdout and "act_1010101" in result.stdout and "123-456-7890" in result.stdout
    assert "Last runs" in result.stdout and "demo" in result.stdout
    assert _files(tmp_path / "fresh-home") == [] and _files(tmp_path / "tmp") == [] and _files(workdir) == []
    assert "EAADemo" not in result.stdout + result.stderr


def test_demo_keep_leaves_the_database(tmp_path):
    env = _fresh_env(tmp_path)
    result = subprocess.run([sys.executable, "-m", "emsync", "demo", "--keep"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    kept = list((tmp_path / "tmp").rglob("demo.db"))
    assert len(kept) == 1 and str(kept[0]) in result.stdout.replace("\n", "")
    env_file = kept[0].with_name("demo.env")
    assert env_file.stat().st_mode & 0o777 == 0o600 and str(env_file) in result.stdout.replace("\n", "")
    key = next(line.split("=", 1)[1] for line in env_file.read_text().splitlines() if line.startswith("EMSYNC_SECRET_KEY="))
    assert key and key not in result.stdout + result.stderr, "the key is kept in the file, never printed"
    # emsync reads the kept database with it: the one problem is the revoked token the demo shows on purpose
    check = subprocess.run(
        [sys.executable, "-m", "emsync", "--env-file", str(env_file), "status", "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 2 and "needs_reauth" in check.stdout, check.stdout + check.stderr
    assert "decrypt" not in check.stdout and "critical=1" in check.stdout, check.stdout


def test_sandbox_command_serves_and_prints_the_settings(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "emsync", "sandbox", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_fresh_env(tmp_path),
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("emsync sandbox listening on http://127.0.0.1:")
        url = first.split(" on ")[1].split()[0]
        exports = [proc.stdout.readline() for _ in range(11)]  # a blank line, then the exports
        assert f"export META_GRAPH_URL={url}\n" in exports and f"export GOOGLE_OAUTH_TOKEN_URL={url}/token\n" in exports
        assert "export OAUTHLIB_INSECURE_TRANSPORT=1\n" in exports, "connect google works over the sandbox's http"
        assert requests.get(f"{url}/__sandbox/requests", timeout=5).json() == {"requests": []}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_sandbox_command_rejects_a_bad_scenario(tmp_path, cli):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = cli("sandbox", "--scenario", str(bad))
    assert result.code == 2 and "not valid JSON" in result.err
    assert cli("sandbox", "--port", "70000").code == 2
