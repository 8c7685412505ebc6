"""The ``hezo-agent`` command line as an installer uses it: real processes, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from simulator.fleet import Fleet

HEZO_AGENT = str(Path(sys.executable).with_name("hezo-agent"))


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([HEZO_AGENT, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
    return fleet_factory(devices=4, seed=5)


@pytest.fixture
def fleet_config(fleet: Fleet, tmp_path: Path) -> Path:
    return fleet.write_agent_config(tmp_path / "site.yaml", data_dir=tmp_path / "data", timeout_s=1.0)


def test_missing_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "nope.yaml" in result.stderr and "file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_names_the_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "sites:\n  - name: hq\n    address: ul. Prosta 1, Warszawa\n"
        "    contact: {name: Jan, phone: '+48 22 000 00 00', email: jan@example.pl}\n"
        "devices:\n  - {id: a, room: r, site: hq, model: A30, host: 'bad host!'}\n"
    )
    result = run("status", "-c", str(bad))
    assert result.returncode == 2
    assert "devices[0].host: not a valid host name or IP" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_every_device_and_exits_0(fleet: Fleet, fleet_config: Path) -> None:
    result = run("check", "-c", str(fleet_config), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["device_id"] for r in rows] == [d.id for d in fleet.devices]
    assert all(r["ok"] for r in rows)
    assert {r["serial"] for r in rows} == {d.serial for d in fleet.devices}


def test_check_names_the_device_that_does_not_answer(fleet: Fleet, fleet_config: Path) -> None:
    down = fleet.devices[2]
    fleet.fault(down.id, "offline")
    result = run("check", "-c", str(fleet_config))
    assert result.returncode == 1
    assert down.id in result.stdout and "unreachable" in result.stdout
    assert "1 of 4 devices did not pass" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_with_unset_password_variable(fleet: Fleet, tmp_path: Path) -> None:
    cfg = tmp_path / "env.yaml"
    data = yaml.safe_load(
        fleet.write_agent_config(tmp_path / "base.yaml", data_dir=tmp_path / "data").read_text()
    )
    for device in data["devices"]:
        device["credentials"] = {"username": "admin", "password_env": "HEZO_TEST_UNSET_PASSWORD"}
    cfg.write_text(yaml.safe_dump(data, allow_unicode=True))
    result = run("check", "-c", str(cfg), "--json")
    assert result.returncode == 1
    rows = json.loads(result.stdout)
    assert all("HEZO_TEST_UNSET_PASSWORD is not set" in r["hint"] for r in rows)


def test_status_and_tickets_on_a_fresh_data_dir(fleet_config: Path) -> None:
    status = run("status", "-c", str(fleet_config), "--json")
    assert status.returncode == 0, status.stderr
    assert {row["state"] for row in json.loads(status.stdout)} == {"unknown"}
    tickets = run("tickets", "-c", str(fleet_config), "--json", "--open")
    assert tickets.returncode == 0, tickets.stderr
    assert json.loads(tickets.stdout) == []


def test_without_c_the_config_comes_from_hezo_agent_config(
    fleet_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEZO_AGENT_CONFIG", str(fleet_config))
    status = run("status", "--json")
    assert status.returncode == 0, status.stderr
    assert len(json.loads(status.stdout)) == 4
    monkeypatch.setenv("HEZO_AGENT_CONFIG", str(fleet_config.with_name("missing.yaml")))
    missing = run("status")
    assert (
        missing.returncode == 2
        and "missing.yaml: file not found (give the path with -c FILE)" in missing.stderr
    )


def test_demo_json_shows_an_outage_a_flapping_device_and_a_site_network_outage() -> None:
    result = run("demo", "--json", "--seconds", "80", timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["devices"] >= 10
    by_problem = {t["problem"]: t for t in summary["tickets"]}
    assert sorted(t["problem"] for t in summary["tickets"]) == ["flapping", "offline", "site_network"], (
        "one ticket per problem: no device tickets during the site outage, no critical cycle while flapping"
    )
    offline = by_problem["offline"]
    assert (offline["priority"], offline["model"], offline["status"]) == ("critical", "A30", "resolved")
    assert offline["device"] == summary["offline_device"]
    assert offline["serial"] and offline["contract"] and offline["attachments"]
    flapping = by_problem["flapping"]
    assert (flapping["priority"], flapping["device"]) == ("medium", summary["flapping_device"])
    site = by_problem["site_network"]
    assert (site["priority"], site["site"], site["status"]) == ("critical", "krakow-office", "resolved")
    assert summary["tickets_opened"] == 3


def test_run_with_unset_password_variable_exits_2_naming_it(fleet: Fleet, tmp_path: Path) -> None:
    data = yaml.safe_load(
        fleet.write_agent_config(tmp_path / "base.yaml", data_dir=tmp_path / "data").read_text()
    )
    data["devices"][1]["credentials"] = {"username": "admin", "password_env": "HEZO_TEST_UNSET_PASSWORD"}
    cfg = tmp_path / "env.yaml"
    cfg.write_text(yaml.safe_dump(data, allow_unicode=True))
    result = run("run", "-c", str(cfg), timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"config error in {cfg}: devices[1].credentials.password_env: "
        "environment variable HEZO_TEST_UNSET_PASSWORD is not set "
        "(set it in the agent's service environment, or use password_file)"
    )


def test_check_shows_each_channel_and_a_degraded_device(fleet: Fleet, fleet_config: Path) -> None:
    degraded = fleet.devices[0]
    fleet.fault(degraded.id, "offline", "tcp6024")
    result = run("check", "-c", str(fleet_config), "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["device_id"]: r for r in json.loads(result.stdout)}
    assert rows[degraded.id]["result"] == "degraded"
    channels = {c["channel"]: c for c in rows[degraded.id]["channels"]}
    assert channels["http"]["ok"] and not channels["tcp6024"]["ok"]
    assert channels["tcp6024"]["result"] == "unreachable"
    healthy = rows[fleet.devices[1].id]
    assert [(c["channel"], c["ok"]) for c in healthy["channels"]] == [("http", True), ("tcp6024", True)]
    table = run("check", "-c", str(fleet_config))
    assert "channels" in table.stdout and "tcp6024" in table.stdout


def test_unusable_data_dir_is_one_line_not_a_traceback(fleet: Fleet, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    cfg = fleet.write_agent_config(tmp_path / "site.yaml", data_dir=blocker / "data")
    for command in ("tickets", "status"):
        result = run(command, "-c", str(cfg))
        assert result.returncode == 1, (command, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0
