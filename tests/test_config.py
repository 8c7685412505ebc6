"""The config layer: the commented example loads, and every mistake reads like a person wrote it.

Bad configs follow Prometheus blackbox_exporter's habit: ``tests/fixtures/config/bad_*.yaml``
each sit beside ``bad_*.txt`` holding the exact text the user sees. The tests run from
``tests/fixtures`` so the paths in those texts do not depend on where the repo lives.
"""

from __future__ import annotations

import re
import shutil
import typing
from datetime import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from config.loader import (
    BUILTIN_PROFILES,
    DEFAULT_PROFILE,
    ConfigError,
    load_config,
    load_profile,
    profile_name,
    resolve_password,
)
from config.schema import AgentConfig, Credentials, Model, Profile

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "example.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BAD_CONFIGS = sorted((FIXTURES / "config").glob("bad_*.yaml"))
PROFILES_BAD = FIXTURES / "profiles_bad"
SECRET = "S3cret-0000"

SITE = """
sites:
  - name: warszawa
    address: "ul. Marszałkowska 142, 00-061 Warszawa"
    contact: {name: Anna Kowalska, phone: "+48 22 555 01 23", email: it@example.pl}
"""
DEVICE = "  - {id: a30-zarzad, room: Sala Zarząd, site: warszawa, model: A30, host: 127.0.0.1}\n"


def _render(err: ConfigError) -> str:
    return err.render().replace("\\", "/")  # the same text on Windows


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- the example -------------------------------------------------------------------------


def test_example_loads_with_sites_devices_and_contracts() -> None:
    cfg = load_config(EXAMPLE)
    assert len(cfg.sites) >= 1 and len(cfg.devices) >= 1 and len(cfg.contracts) >= 1
    assert {d.model for d in cfg.devices} == {"A20", "A30", "MVC"}
    assert cfg.sites[0].business_hours.start == time(8, 0)
    assert cfg.sites[0].canaries, "the example shows canaries"
    assert cfg.contract_for(cfg.contracts[0].serials[0]) == cfg.contracts[0]
    assert cfg.ticketing.backend == "local"


def test_example_shows_both_credential_styles_with_relative_file_beside_it() -> None:
    cfg = load_config(EXAMPLE)
    creds = [d.credentials for d in cfg.devices if d.credentials is not None]
    assert any(c.password_env for c in creds)
    files = [c.password_file for c in creds if c.password_file is not None]
    assert files and all(f.is_absolute() and EXAMPLE.parent in f.parents for f in files)


def _keys(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    out: set[str] = set()
    seen.add(model)
    for name, field in model.model_fields.items():
        out.add(name)
        stack: list[typing.Any] = [field.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel) and ann not in seen:
                out |= _keys(ann, seen)
            stack.extend(typing.get_args(ann))
    return out


def test_example_explains_every_key_of_the_schema() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    keys = _keys(AgentConfig, set())
    assert {"poll_interval_s", "password_env", "password_file", "canaries", "days", "path"} <= keys
    missing = sorted(k for k in keys if not re.search(rf"^[ #-]*(- )?{k}:", text, re.M))
    assert missing == []
    assert "ASSUMED" in text and "example.local" in text


# --- bad configs: exact text -------------------------------------------------------------


def test_every_bad_config_has_its_expected_text_and_the_required_cases_exist() -> None:
    yamls = {p.stem for p in BAD_CONFIGS}
    texts = {p.stem for p in (FIXTURES / "config").glob("bad_*.txt")}
    assert yamls == texts
    required = {
        "bad_host", "bad_unknown_key", "bad_missing_key", "bad_model", "bad_inline_password",
        "bad_both_passwords", "bad_unknown_site", "bad_duplicate_device", "bad_unknown_profile",
        "bad_profile_model", "bad_timezone", "bad_contract_dates", "bad_business_hours",
        "bad_yaml_syntax", "bad_empty", "bad_top_level_list", "bad_language",
        "bad_negative_interval", "bad_serial_two_contracts", "bad_email",
        "bad_profile_endpoint", "bad_profile_status",
    }  # fmt: skip
    assert required <= yamls


@pytest.mark.parametrize("bad", BAD_CONFIGS, ids=lambda p: p.stem)
def test_bad_config_shows_the_exact_error(bad: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    expected = bad.with_suffix(".txt").read_text(encoding="utf-8").rstrip("\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Path("config") / bad.name)
    assert _render(caught.value) == expected
    for line in caught.value.lines:  # every line starts with where the problem is
        assert re.match(
            r"^(\(top level\)|line \d+, column \d+|[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*): ", line
        )


def test_bad_host_is_the_fourth_of_four_devices() -> None:
    bad = FIXTURES / "config" / "bad_host.yaml"
    assert bad.read_text(encoding="utf-8").count("- {id:") == 4
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    assert caught.value.lines == ["devices[3].host: not a valid host name or IP"]


@pytest.mark.parametrize("name", ["bad_inline_password", "bad_password_env_name"])
def test_a_password_in_the_wrong_place_is_never_echoed(name: str) -> None:
    bad = FIXTURES / "config" / f"{name}.yaml"
    assert SECRET in bad.read_text(encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    err = caught.value
    for text in (err.render(), str(err), repr(err), str(err.__cause__), repr(err.__cause__)):
        assert SECRET not in text


def test_missing_config_file_says_how_to_name_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "hezo.yaml")
    assert (
        caught.value.render()
        == f"config error in {tmp_path / 'hezo.yaml'}: file not found (give the path with -c FILE)"
    )


def test_a_bad_profile_name_cannot_walk_out_of_the_profile_folders(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path / "hezo.yaml", SITE + "devices:\n" + DEVICE.replace("}", ", profile: ../../secrets}")
    )
    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    assert caught.value.lines == [
        "devices[0].profile: not a valid profile name '../../secrets':"
        " use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
    ]


def test_unquoted_times_are_read_as_clock_times_not_base_60_numbers(tmp_path: Path) -> None:
    site = SITE + "    business_hours: {start: 07:30, end: 17:00, days: [mon, sat]}\n"
    cfg = load_config(_write(tmp_path / "hezo.yaml", site + "devices:\n" + DEVICE))
    hours = cfg.sites[0].business_hours
    assert (hours.start, hours.end, hours.days) == (time(7, 30), time(17, 0), ("mon", "sat"))


# --- bad profiles --------------------------------------------------------------------------


def test_profile_field_on_an_unknown_endpoint_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    with pytest.raises(ConfigError) as caught:
        load_profile("bad-endpoint", [Path("profiles_bad")])
    assert _render(caught.value) == (
        "config error in profiles_bad/bad-endpoint.yaml: fields.uptime_s.endpoint: unknown endpoint 'stats'"
        " (endpoints defined: info, logs, status)"
    )


def test_profile_item_without_status_asks_for_documented_or_assumed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    with pytest.raises(ConfigError) as caught:
        load_profile("bad-no-status", [Path("profiles_bad")])
    assert _render(caught.value) == (
        "config error in profiles_bad/bad-no-status.yaml: endpoints.status.status: required key is missing:"
        " say where this comes from, status: documented or status: assumed"
    )


def test_a_broken_profile_used_by_two_devices_is_reported_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(FIXTURES / "config" / "bad_profile_endpoint.yaml")
    assert len(caught.value.lines) == 1 and caught.value.lines[0].startswith("devices[0].profile: ")


# --- paths ---------------------------------------------------------------------------------


def test_relative_paths_resolve_beside_the_config_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "etc" / "hezo"
    (base / "profiles").mkdir(parents=True)
    text = (
        "agent: {data_dir: data, profiles_dir: profiles}\n"
        + SITE
        + "devices:\n"
        + DEVICE.replace("}", ", credentials: {password_file: secrets/a30.password}}")
        + "ticketing: {local: {path: tickets}}\n"
    )
    cfg_path = _write(base / "hezo.yaml", text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(cfg_path)
    real = base.resolve()
    assert cfg.agent.data_dir == real / "data"
    assert cfg.agent.profiles_dir == real / "profiles"
    assert cfg.ticketing.local.path == real / "tickets"
    creds = cfg.devices[0].credentials
    assert creds is not None and creds.password_file == real / "secrets" / "a30.password"


def test_absolute_and_home_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    absolute = (tmp_path / "abs-data").resolve()
    text = f"agent: {{data_dir: '{absolute.as_posix()}'}}\nticketing: {{local: {{path: ~/tickets}}}}\n"
    cfg = load_config(_write(tmp_path / "cfg" / "hezo.yaml", text + SITE + "devices:\n" + DEVICE))
    assert cfg.agent.data_dir == absolute
    assert cfg.ticketing.local.path == tmp_path / "home" / "tickets"


def test_profiles_dir_is_searched_before_the_built_in_profiles(tmp_path: Path) -> None:
    own = tmp_path / "profiles"
    own.mkdir()
    text = (BUILTIN_PROFILES / "yealink-a30.yaml").read_text(encoding="utf-8")
    _write(own / "yealink-a30.yaml", text.replace("description: ", "description: SITE COPY "))
    shutil.copy(BUILTIN_PROFILES / "yealink-a20.yaml", own / "yealink-a20.yaml")
    assert load_profile("yealink-a30", [own]).description.startswith("SITE COPY")
    cfg = load_config(
        _write(tmp_path / "hezo.yaml", "agent: {profiles_dir: profiles}\n" + SITE + "devices:\n" + DEVICE)
    )
    assert cfg.agent.profiles_dir == own.resolve()


# --- passwords -----------------------------------------------------------------------------


def test_password_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEZO_TEST_PASSWORD", SECRET)
    assert resolve_password(Credentials(password_env="HEZO_TEST_PASSWORD"), "devices[0]") == SECRET


def test_unset_environment_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEZO_TEST_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as caught:
        resolve_password(Credentials(password_env="HEZO_TEST_PASSWORD"), "devices[0]")
    assert caught.value.render() == (
        "config error in devices[0]: credentials.password_env: environment variable HEZO_TEST_PASSWORD"
        " is not set (set it in the agent's service environment, or use password_file)"
    )


def test_empty_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEZO_TEST_PASSWORD", "")
    with pytest.raises(ConfigError) as caught:
        resolve_password(Credentials(password_env="HEZO_TEST_PASSWORD"), "devices[0]")
    assert caught.value.lines == [
        "credentials.password_env: environment variable HEZO_TEST_PASSWORD is empty"
    ]


def test_password_from_file_drops_the_line_break_and_a_bom_but_keeps_spaces(tmp_path: Path) -> None:
    unix = tmp_path / "unix.password"
    unix.write_bytes(f" {SECRET} \n".encode())
    windows = tmp_path / "windows.password"
    windows.write_bytes(b"\xef\xbb\xbf" + f"{SECRET}\r\n".encode())
    assert resolve_password(Credentials(password_file=unix), "devices[0]") == f" {SECRET} "
    assert resolve_password(Credentials(password_file=windows), "devices[0]") == SECRET


def test_missing_password_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "secrets" / "a30.password"
    with pytest.raises(ConfigError) as caught:
        resolve_password(Credentials(password_file=missing), "devices[2]")
    assert (
        caught.value.render()
        == f"config error in devices[2]: credentials.password_file: file not found: {missing}"
    )


def test_empty_password_file_is_an_error(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.password", "\n")
    with pytest.raises(ConfigError) as caught:
        resolve_password(Credentials(password_file=empty), "devices[0]")
    assert caught.value.lines == [f"credentials.password_file: {empty} is empty"]


# --- built-in profiles ---------------------------------------------------------------------


@pytest.mark.parametrize("model", typing.get_args(Model))
def test_builtin_profile_loads_and_marks_every_item_documented_or_assumed(model: str) -> None:
    profile = load_profile(profile_name(model, None))
    assert profile.name == DEFAULT_PROFILE[model] and model in profile.models
    items: list[typing.Any] = [
        profile.http,
        profile.auth,
        *profile.endpoints.values(),
        *profile.fields.values(),
    ]
    if profile.auth.login is not None:
        items.append(profile.auth.login)
    if profile.peripherals is not None:
        items.append(profile.peripherals)
    assert len(items) >= 10
    for item in items:
        assert item.status in ("documented", "assumed"), item
    # Nothing about these models' local API is published: the profiles must not claim otherwise.
    assert {item.status for item in items} == {"assumed"}


def test_builtin_profiles_cover_exactly_the_supported_models() -> None:
    assert set(DEFAULT_PROFILE) == set(typing.get_args(Model))
    assert {p.stem for p in BUILTIN_PROFILES.glob("*.yaml")} == set(DEFAULT_PROFILE.values())
    assert isinstance(load_profile("yealink-mvc"), Profile)


# --- rendering -----------------------------------------------------------------------------


def test_render_one_problem_on_one_line() -> None:
    err = ConfigError("hezo.yaml", ["agent.poll_interval_s: must be greater than 0, got -5"])
    assert err.render() == "config error in hezo.yaml: agent.poll_interval_s: must be greater than 0, got -5"


def test_render_several_problems_one_per_indented_line() -> None:
    err = ConfigError(
        "hezo.yaml",
        ["devices[3].host: not a valid host name or IP", "agent.language: must be one of pl, en, got 'de'"],
    )
    assert err.render() == (
        "config error in hezo.yaml:\n"
        "  devices[3].host: not a valid host name or IP\n"
        "  agent.language: must be one of pl, en, got 'de'"
    )
    assert err.lines[0] in str(err)


def test_a_numeric_password_pasted_into_credentials_is_not_echoed(tmp_path: Path) -> None:
    device = DEVICE.replace("}", ", credentials: {password_env: 73570000}}")
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path / "hezo.yaml", SITE + "devices:\n" + device))
    assert caught.value.lines == [
        "devices[0].credentials.password_env: must be text; put the value in quotes so YAML keeps it as text"
    ]
    assert "73570000" not in str(caught.value.__cause__)


def test_token_auth_without_a_login_endpoint_is_refused_when_loading(tmp_path: Path) -> None:
    text = (BUILTIN_PROFILES / "yealink-a30.yaml").read_text(encoding="utf-8")
    login = "  login: {path: /api/auth/login, method: POST, status: assumed}\n"
    assert login in text
    _write(tmp_path / "yealink-a30.yaml", text.replace(login, ""))
    with pytest.raises(ConfigError) as caught:
        load_profile("yealink-a30", [tmp_path])
    assert caught.value.lines == [
        "auth.login: required when auth.kind is token: the endpoint that answers the login"
    ]
