"""A real Redmine (the Debian package) on 127.0.0.1 for tests, in a private instance.

Usage (one per test session: it takes 10-60 s to boot)::

    with Redmine(tmp_path_factory.mktemp("redmine")) as peer:
        peer.url, peer.api_key, peer.project, peer.key_field_id, peer.reporter_key
        peer.get("/issues/1.json", include="attachments").json()
        peer.download(content_url)

Nothing of the system's Redmine is touched but two things the recipe needs: ``gem "webrick"``
in ``/usr/share/redmine/Gemfile.local`` (Debian ships no app server; ruby-webrick provides it
offline) and, while the server runs, a symlink ``/usr/share/redmine/instances/hezo-test-…``
(Debian's multi-instance support) pointing at ``folder``. The instance has its own copy of
the packaged SQLite database, its own files, logs and cache, so tests never write to the
default instance. One ``rails runner`` (concurrently with the server's boot) enables the REST
API and creates a project, a filterable "HEZO key" custom field and a non-admin user with
the Reporter role. A missing package fails the test with what to install (never a skip).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import requests
import yaml

ROOT = Path("/usr/share/redmine")
INSTANCES = ROOT / "instances"
GEMFILE_LOCAL = ROOT / "Gemfile.local"
DEFAULT_DATABASE_YML = Path("/etc/redmine/default/database.yml")
PACKAGES = "redmine redmine-sqlite ruby-webrick"
PREFIX = "hezo-test-"
START_DEADLINE_S = 180.0
POLL_S = 0.05
STOP_WAIT_S = 10.0
WEBRICK_LINE = re.compile(r"""^\s*gem\s+["']webrick["']""", re.M)

SETUP_RB = """
require "json"
require "securerandom"
Setting.rest_api_enabled = "1"
trackers = Tracker.pluck(:id)
project = Project.create!(name: "HEZO #{ENV["HEZO_PROJECT"]}", identifier: ENV["HEZO_PROJECT"],
                          tracker_ids: trackers, is_public: false)
field = IssueCustomField.create!(name: "HEZO key #{ENV["HEZO_PROJECT"]}", field_format: "string",
                                 is_filter: true, is_for_all: true, searchable: true,
                                 tracker_ids: trackers)
reporter = User.new(firstname: "Hezo", lastname: "Reporter", language: "en",
                    mail: "#{ENV["HEZO_PROJECT"]}@example.invalid")
reporter.login = ENV["HEZO_PROJECT"]
reporter.password = reporter.password_confirmation = SecureRandom.hex(16)
reporter.save!
role = Role.find_by(name: "Reporter") || Role.givable.sorted.last
Member.create!(project: project, principal: reporter, role_ids: [role.id])
puts "HEZO-SETUP " + JSON.generate(admin_key: User.find_by_login("admin").api_key,
                                   reporter_key: reporter.api_key, field_id: field.id,
                                   project: project.identifier)
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` (loopback) that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def require_redmine() -> None:
    """Fail the test (never skip) when the packages are missing, naming them."""
    missing = [p for p in (ROOT / "bin" / "rails", DEFAULT_DATABASE_YML) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(map(str, missing))} not found: apt-get install {PACKAGES}")


def ensure_webrick() -> bool:
    """Add ``gem "webrick"`` to Redmine's Gemfile.local (the recipe in real-peers.md) if missing.

    Returns whether the file changed (Bundler then rewrites Gemfile.lock on the next start).
    """
    text = GEMFILE_LOCAL.read_text() if GEMFILE_LOCAL.exists() else ""
    if WEBRICK_LINE.search(text):
        return False
    try:
        tmp = GEMFILE_LOCAL.with_name(f".Gemfile.local.{os.getpid()}")
        tmp.write_text(text + ("" if not text or text.endswith("\n") else "\n") + 'gem "webrick"\n')
        tmp.replace(GEMFILE_LOCAL)
    except OSError as err:
        pytest.fail(f'cannot add gem "webrick" to {GEMFILE_LOCAL} ({err}): run the tests as root')
    return True


def packaged_database() -> Path:
    """The SQLite file of the packaged default instance (copied, never opened for writing)."""
    try:
        config = yaml.safe_load(DEFAULT_DATABASE_YML.read_text())
        return Path(config["production"]["database"])
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        pytest.fail(f"cannot read the packaged Redmine database from {DEFAULT_DATABASE_YML}: {err}")


def remove_stale_instances() -> None:
    """Remove instance links of earlier test runs whose folder is gone (a killed run)."""
    for link in INSTANCES.glob(PREFIX + "*"):
        if link.is_symlink() and not link.exists():
            with contextlib.suppress(OSError):
                link.unlink()


class Redmine:
    """One private Redmine instance served by webrick on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = PREFIX + secrets.token_hex(4)
        self.project = "hz" + secrets.token_hex(4)
        self.link = INSTANCES / self.name
        self.port = 0
        self.url = ""
        self.api_key = ""
        self.reporter_key = ""
        self.key_field_id = 0
        self.log_path = folder / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Redmine:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Build the instance, boot the server and run the setup script side by side, wait for both.

        Right after Gemfile.local changed, the setup runs first: two Rails processes must not
        both rewrite Gemfile.lock.
        """
        require_redmine()
        gemfile_changed = ensure_webrick()
        remove_stale_instances()
        self._make_instance()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = self._env()
        if gemfile_changed:
            done = self._run_setup(env)
            self._start_server(env)
        else:
            self._start_server(env)
            done = self._run_setup(env)
        self._read_setup(done)
        self._wait_ready()

    def _start_server(self, env: dict[str, str]) -> None:
        server = ["ruby", "bin/rails", "server", "-u", "webrick", "-e", "production"]
        server += ["-b", "127.0.0.1", "-p", str(self.port), "-P", str(self.folder / "server.pid")]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(server, cwd=ROOT, env=env, stdout=log, stderr=log)

    def _run_setup(self, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
        setup_rb = self.folder / "setup.rb"
        setup_rb.write_text(SETUP_RB)
        try:
            return subprocess.run(
                ["ruby", "bin/rails", "runner", "-e", "production", str(setup_rb)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                timeout=START_DEADLINE_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"rails runner took more than {START_DEADLINE_S:g} s")

    def stop(self) -> None:
        """Stop the server by its PID and remove the instance link."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_WAIT_S)
        if self.link.is_symlink():
            self.link.unlink()

    def _make_instance(self) -> None:
        for sub in (
            "config",
            "files",
            "log",
            "tmp/cache",
            "tmp/pids",
            "tmp/sessions",
            "public/plugin_assets",
        ):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        db = self.folder / "redmine.sqlite3"
        source = packaged_database()
        try:
            with (
                contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
                contextlib.closing(sqlite3.connect(db)) as dst,
            ):
                src.backup(dst)
        except sqlite3.Error as err:
            pytest.fail(f"cannot copy the packaged Redmine database {source}: {err} (run the tests as root)")
        config = {
            "production": {"adapter": "sqlite3", "database": str(db), "encoding": "utf8", "timeout": 20000}
        }
        (self.folder / "config" / "database.yml").write_text(yaml.safe_dump(config))
        (self.folder / "config" / "secret_key.txt").write_text(secrets.token_hex(32) + "\n")
        self.link.symlink_to(self.folder, target_is_directory=True)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "X_DEBIAN_SITEID")}
        env.update(REDMINE_INSTANCE=self.name, RAILS_ENV="production", HEZO_PROJECT=self.project)
        return env

    def _read_setup(self, done: subprocess.CompletedProcess[bytes]) -> None:
        out = done.stdout.decode("utf-8", "replace")
        line = next((ln for ln in out.splitlines() if ln.startswith("HEZO-SETUP ")), None)
        if done.returncode != 0 or line is None:
            self.stop()
            err = done.stderr.decode("utf-8", "replace")[-3000:]
            pytest.fail(f"Redmine setup (rails runner) failed, exit {done.returncode}:\n{out[-2000:]}\n{err}")
        data = json.loads(line.split(" ", 1)[1])
        self.api_key = str(data["admin_key"])
        self.reporter_key = str(data["reporter_key"])
        self.key_field_id = int(data["field_id"])
        self.project = str(data["project"])

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(requests.RequestException):
                if self.get("/users/current.json", timeout=2).status_code == 200:
                    return
            time.sleep(POLL_S)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        pytest.fail(f"Redmine did not answer on {self.url} within {START_DEADLINE_S:g} s; its log:\n{tail}")

    # --- helpers for assertions --------------------------------------------------------------

    def get(self, path: str, key: str | None = None, timeout: float = 30, **params: Any) -> requests.Response:
        """GET ``path`` (or an absolute URL of this server) as the admin (or ``key``'s user)."""
        url = path if "://" in path else self.url + path
        headers = {"X-Redmine-API-Key": key or self.api_key}
        return requests.get(url, headers=headers, params=params or None, timeout=timeout)

    def issue(self, issue_id: str | int, include: str = "") -> dict[str, Any]:
        """The issue as the API shows it to the admin (``include``: journals, attachments, ...)."""
        resp = self.get(f"/issues/{issue_id}.json", **({"include": include} if include else {}))
        resp.raise_for_status()
        return dict(resp.json()["issue"])

    def download(self, url: str) -> bytes:
        """The bytes of an attachment's ``content_url``."""
        resp = self.get(url)
        resp.raise_for_status()
        return resp.content
