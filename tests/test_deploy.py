"""Deployment paths that agree: `init --env-file` writes the database and the key into one private env file,
and the README's install block, the cron line, the systemd unit and a shell in another directory all find
that one database. The README's blocks are run as written, with /opt/emsync and /var/log/emsync moved
under a temporary directory and the test's own virtualenv as the installed one (no sudo, useradd or systemctl)."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emsync.files import atomic_write, create_private, private_dir

from .conftest import ROOT, TEST_KEY

# ---------------------------------------------------------------- the README's blocks, localised


def _readme_block(marker: str) -> str:
    """The shell block between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"<!-- {marker}:begin -->\n", 1)[1].split(f"<!-- {marker}:end -->", 1)[0].strip()
    assert body.startswith("```sh\n") and body.endswith("\n```"), f"README: the {marker} block is one ```sh block"
    return body.removeprefix("```sh\n").removesuffix("\n```") + "\n"


class Install:
    """/opt/emsync (the emsync user's home) and /var/log/emsync under a temporary directory."""

    def __init__(self, tmp_path: Path):
        self.home = tmp_path / "opt" / "emsync"
        self.logs = tmp_path / "var" / "log" / "emsync"
        self.home.mkdir(parents=True)
        self.logs.mkdir(parents=True, mode=0o700)  # README: install -d -o emsync -g emsync -m 0700 /var/log/emsync
        venv = Path(sys.prefix)
        if (venv / "bin" / "emsync").is_file():
            (self.home / ".venv").symlink_to(venv)  # the installed virtualenv
        else:  # not run from a virtualenv with the console script: the same command through this interpreter
            (self.home / ".venv" / "bin").mkdir(parents=True)
            shim = self.home / ".venv" / "bin" / "emsync"
            shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m emsync "$@"\n')
            shim.chmod(0o755)
        self.env_file = self.home / ".env"

    def localise(self, text: str) -> str:
        return text.replace("/opt/emsync", str(self.home)).replace("/var/log/emsync", str(self.logs))

    def user_env(self, **extra: str) -> dict[str, str]:
        """What `sudo -u emsync -i` or cron gives the emsync user: its HOME, a plain PATH, no emsync setting."""
        return {"HOME": str(self.home), "USER": "emsync", "LOGNAME": "emsync", "PATH": "/usr/local/bin:/usr/bin:/bin", **extra}

    def run(self, argv: list[str], *, cwd: Path | str | None = None, env: dict | None = None, timeout: float = 180):
        return subprocess.run(
            argv,
            cwd=cwd or self.home,
            env=env or self.user_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def shell(self, script: str, cwd: str = "/") -> subprocess.CompletedProcess:
        """A later login shell of the emsync user (its ~/.profile read), in another directory."""
        return self.run(["bash", "-c", f". ~/.profile && cd {shlex.quote(cwd)} && {script}"])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _runs(database: Path) -> list[str]:
    with sqlite3.connect(database) as conn:
        return [trigger for (trigger,) in conn.execute("SELECT trigger FROM sync_runs ORDER BY id")]


def _unit(text: str) -> dict[str, list[str]]:
    """A unit file's [Service] settings: name -> values in order."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            name, _, value = line.partition("=")
            settings.setdefault(name, []).append(value)
    return settings


def _cron_sync_command(install: Install) -> str:
    line = next(line for line in (ROOT / "crontab.example").read_text().splitlines() if line.startswith("*/30 * * * *"))
    return install.localise(line.split(None, 5)[5])


# ---------------------------------------------------------------- the whole path


def test_readme_install_block_then_cron_systemd_and_a_shell_elsewhere_use_one_database(tmp_path):
    install = Install(tmp_path)
    block = install.localise(_readme_block("deploy"))
    # umask 000: what emsync creates must be private anyway
    done = install.run(["bash", "-e", "-c", "umask 000\n" + block])
    assert done.returncode == 0, done.stdout + done.stderr

    env_lines = install.env_file.read_text().splitlines()
    database = install.home / ".local" / "share" / "emsync" / "emsync.db"
    assert [line for line in env_lines if line.startswith("EMSYNC_DATABASE_URL")] == [f"EMSYNC_DATABASE_URL=sqlite:///{database}"]
    keys = [line for line in env_lines if line.startswith("EMSYNC_SECRET_KEY")]
    assert len(keys) == 1 and len(keys[0]) == len("EMSYNC_SECRET_KEY=") + 44
    assert _mode(install.env_file) == 0o600 and _mode(database) == 0o600

    added = install.shell("emsync users add anna@example.com")
    assert added.returncode == 0, added.stderr

    # cron: its own environment (no profile), from /, exactly the crontab.example line
    cron = install.run(["/bin/sh", "-c", _cron_sync_command(install)], cwd="/", env=install.user_env(SHELL="/bin/sh"))
    assert (cron.returncode, cron.stdout, cron.stderr) == (0, "", ""), "a run that succeeded: nothing for cron to mail"
    assert (install.logs / "cron.log").read_text() == "", "crontab.example: --quiet leaves nothing in cron.log when a run succeeded"
    log = install.logs / "emsync.log"
    assert "Sync completed" in log.read_text(), "crontab.example: every run's full log is in EMSYNC_LOG_FILE"
    assert _mode(log) == 0o600

    # systemd: the unit's ExecStart, in its WorkingDirectory, with its Environment= and the HOME of its User=
    service = _unit((ROOT / "deploy" / "emsync.service").read_text())
    env = install.user_env(**dict(install.localise(value).split("=", 1) for value in service.get("Environment", [])))
    unit = install.run(
        shlex.split(install.localise(service["ExecStart"][0])), cwd=install.localise(service["WorkingDirectory"][0]), env=env
    )
    assert unit.returncode == 0, unit.stderr

    assert _runs(database) == ["cron", "cron"], "cron and systemd both wrote to the database init made"
    status = install.shell("emsync status --json", cwd=str(tmp_path))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["database"] == f"sqlite:///{database}"
    users = json.loads(install.shell("emsync users list --json", cwd="/tmp").stdout)
    assert [u["email"] for u in users] == ["anna@example.com"]
    for path in database.parent.rglob("*"):  # the database, its -wal/-shm and lock files, their directories
        assert _mode(path) & 0o077 == 0, f"{path} is readable by others: {oct(_mode(path))}"


def test_readme_serve_example_sets_the_secret_in_the_shell_before_curl(tmp_path):
    pytest.importorskip("uvicorn")
    install = Install(tmp_path)
    assert install.run([str(install.home / ".venv" / "bin" / "emsync"), "init", "--env-file", str(install.env_file)]).returncode == 0
    (install.home / ".profile").write_text(f'export EMSYNC_ENV_FILE={install.env_file}\nexport PATH="{install.home}/.venv/bin:$PATH"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    block = install.localise(_readme_block("serve")).replace("8787", str(port))
    out_file, err_file = tmp_path / "out", tmp_path / "err"
    # Files, not pipes: the server the block leaves in the background keeps its copies open.
    with out_file.open("w") as out, err_file.open("w") as err:
        proc = subprocess.Popen(
            ["bash", "-e", "-c", ". ~/.profile\n" + block],
            cwd=install.home,
            env=install.user_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # `emsync serve` stays in this new group: ours to stop
        )
    try:
        code = proc.wait(timeout=180)
    finally:
        _stop_group(proc.pid)
    assert code == 0, err_file.read_text()
    answer = json.loads(re.search(r'\{"run_id".*?\}', out_file.read_text()).group(0))
    assert answer["status"] == "running" and answer["run_id"] == 1
    secrets = [line for line in install.env_file.read_text().splitlines() if line.startswith("CRON_SECRET=")]
    assert len(secrets) == 1 and len(secrets[0]) > len("CRON_SECRET=") + 32


def _stop_group(pgid: int) -> None:
    """Stop what the block left running (`emsync serve`), waiting (bounded) until none of its group is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
        for _ in range(1200):
            os.killpg(pgid, 0)
            time.sleep(0.05)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path):
    install = Install(tmp_path)
    units = tmp_path / "units"
    units.mkdir()
    for name in ("emsync.service", "emsync.timer"):
        (units / name).write_text(install.localise((ROOT / "deploy" / name).read_text()))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "emsync.service"), str(units / "emsync.timer")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "emsync" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_unit_cron_and_readme_name_one_env_file():
    service = _unit((ROOT / "deploy" / "emsync.service").read_text())
    assert "--env-file /opt/emsync/.env " in service["ExecStart"][0]
    assert not any(value.startswith("XDG_") for value in service.get("Environment", [])), "the database comes from the env file alone"
    for line in (ROOT / "crontab.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" not in line.split()[0]:
            assert "--env-file /opt/emsync/.env " in line, line
    assert "init --env-file /opt/emsync/.env" in _readme_block("deploy")


# ---------------------------------------------------------------- init --env-file


@pytest.mark.parametrize("where", ["global option", "init option"])
def test_init_creates_the_env_file_0600_with_the_absolute_database_and_the_key(cli, tmp_path, where):
    env_file = tmp_path / "conf" / "emsync.env"
    args = ("--env-file", env_file, "init") if where == "global option" else ("init", "--env-file", env_file)
    old = os.umask(0)  # whatever the umask, the file must come out 0600
    try:
        result = cli(*args)
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    database = tmp_path / "home" / ".local" / "share" / "emsync" / "emsync.db"
    assert f"Wrote EMSYNC_DATABASE_URL=sqlite:///{database} to {env_file} (mode 0600)." in result.out
    content = env_file.read_text()
    assert content.count("EMSYNC_DATABASE_URL=") == 1 and f"EMSYNC_DATABASE_URL=sqlite:///{database}\n" in content
    assert content.count("EMSYNC_SECRET_KEY=") == 1 and _mode(env_file) == 0o600 and _mode(env_file.parent) == 0o700
    assert _mode(database) == 0o600 and _mode(database.parent) == 0o700
    again = cli(*args)
    assert again.code == 0 and "Wrote" not in again.out and "Generated" not in again.out
    assert env_file.read_text() == content


def test_init_fills_a_copy_of_env_example_in_place(cli, tmp_path):
    env_file = tmp_path / "work" / ".env"
    shutil.copy(ROOT / ".env.example", env_file)
    env_file.chmod(0o644)
    result = cli("init")
    assert result.code == 0, result.err
    before, after = (ROOT / ".env.example").read_text().splitlines(), env_file.read_text().splitlines()
    assert len(after) == len(before), "filled in place: no line added"
    changed = {a.split("=", 1)[0]: a for b, a in zip(before, after, strict=True) if a != b}
    assert set(changed) == {"EMSYNC_DATABASE_URL", "EMSYNC_SECRET_KEY"}
    assert (
        changed["EMSYNC_DATABASE_URL"] == f"EMSYNC_DATABASE_URL=sqlite:///{tmp_path / 'home' / '.local' / 'share' / 'emsync' / 'emsync.db'}"
    )
    assert len(changed["EMSYNC_SECRET_KEY"]) == len("EMSYNC_SECRET_KEY=") + 44 and _mode(env_file) == 0o600
    assert cli("init").code == 0 and env_file.read_text().splitlines() == after


def test_init_leaves_no_second_or_empty_key_line(cli, tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text("EMSYNC_SECRET_KEY=\nEMSYNC_CONCURRENCY=2\nexport EMSYNC_SECRET_KEY=\n")
    assert cli("--env-file", env_file, "init").code == 0
    lines = env_file.read_text().splitlines()
    assert [line for line in lines if "EMSYNC_SECRET_KEY" in line] == [lines[0]] and len(lines[0]) > len("EMSYNC_SECRET_KEY=")
    assert lines[1] == "EMSYNC_CONCURRENCY=2"


def test_a_relative_sqlite_url_is_written_absolute_and_found_from_elsewhere(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EMSYNC_DATABASE_URL", "sqlite:///data/emsync.db")  # relative to the working directory
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    (tmp_path / "work" / "data").mkdir()
    env_file = tmp_path / "emsync.env"
    assert cli("init", "--env-file", env_file).code == 0
    assert f"EMSYNC_DATABASE_URL=sqlite:///{tmp_path / 'work' / 'data' / 'emsync.db'}\n" in env_file.read_text()
    assert cli("users", "add", "anna@example.com").code == 0
    monkeypatch.delenv("EMSYNC_DATABASE_URL")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "elsewhere"))  # systemd, another user's shell
    monkeypatch.chdir(tmp_path)
    listed = cli("--env-file", env_file, "users", "list", "--json")
    assert [u["email"] for u in json.loads(listed.out)] == ["anna@example.com"]


def test_init_keeps_the_database_the_env_file_names(cli, tmp_path, db_url):
    env_file = tmp_path / "app.env"
    env_file.write_text(f"EMSYNC_DATABASE_URL={db_url}\nEMSYNC_SECRET_KEY={TEST_KEY}\n")
    content = env_file.read_text()
    result = cli("--env-file", env_file, "init")
    assert result.code == 0 and "Wrote" not in result.out and env_file.read_text() == content


def test_init_with_settings_from_the_environment_alone_writes_no_file(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    assert cli("init").code == 0
    assert not (tmp_path / "home" / ".config").exists() and not (tmp_path / "work" / ".env").exists()


def test_init_refuses_an_env_file_it_cannot_write_before_creating_anything(cli, tmp_path):
    (tmp_path / "a-file").write_text("not a directory\n")
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    result = cli("init", "--env-file", str(tmp_path / "a-file" / "emsync.env"))
    assert result.code == 2 and "cannot write env file" in result.err and result.err.count("\n") == 1
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before, "no database, no key, nothing written"


# ---------------------------------------------------------------- files emsync creates


def test_files_are_private_whatever_the_umask_and_a_chosen_mode_is_exact(tmp_path):
    old = os.umask(0)
    try:
        assert create_private(tmp_path / "new" / "db") and not create_private(tmp_path / "new" / "db")
        written = atomic_write(tmp_path / "new" / "env", "A=1\n")
        os.umask(0o077)
        metrics = atomic_write(tmp_path / "metrics.prom", "x 1\n", mode=0o644)
    finally:
        os.umask(old)
    assert (_mode(tmp_path / "new"), _mode(tmp_path / "new" / "db"), _mode(written)) == (0o700, 0o600, 0o600)
    assert _mode(metrics) == 0o644 and metrics.read_text() == "x 1\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file left behind"
    private_dir(tmp_path / "new")  # an existing directory keeps its mode
    (tmp_path / "new").chmod(0o750)
    private_dir(tmp_path / "new")
    assert _mode(tmp_path / "new") == 0o750


def test_a_rotated_log_file_is_private_too(tmp_path):
    from emsync.logs import PrivateRotatingFileHandler

    old = os.umask(0)
    try:
        handler = PrivateRotatingFileHandler(tmp_path / "emsync.log", maxBytes=10, backupCount=2, encoding="utf-8")
        for n in range(3):
            handler.emit(logging.makeLogRecord({"msg": f"line {n} long enough to rotate"}))
        handler.close()
    finally:
        os.umask(old)
    logs = sorted(tmp_path.glob("emsync.log*"))
    assert len(logs) == 3 and all(_mode(p) == 0o600 for p in logs)


def test_init_appends_to_a_writable_env_file_in_a_directory_it_cannot_write(cli, tmp_path, monkeypatch):
    """/etc/emsync.env owned by the service user in root's /etc: no temporary file beside it, so init appends."""
    import emsync.files

    env_file = tmp_path / "etc" / "emsync.env"
    env_file.parent.mkdir()
    env_file.write_text("EMSYNC_CONCURRENCY=2")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(emsync.files.tempfile, "mkstemp", refuse)  # root ignores directory modes: refuse as a user's mkstemp would
    assert cli("--env-file", env_file, "init").code == 0
    lines = env_file.read_text().splitlines()
    assert lines[0] == "EMSYNC_CONCURRENCY=2" and sum(line.startswith("EMSYNC_SECRET_KEY=") for line in lines) == 1
    assert any(line.startswith("EMSYNC_DATABASE_URL=sqlite:///") for line in lines) and _mode(env_file) == 0o600
