"""Channel settings on disk: relative paths in a profile resolve beside it; one secret reader for all.

SSH, SNMP and YMCS secrets are read by :func:`config.loader.read_secret`, so every channel
names its key the same way when a variable or file is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from collectors.transports.snmp_settings import read_snmp_secrets
from collectors.transports.ssh_settings import read_secrets
from config.channels import SnmpChannel, SshChannel
from config.loader import BUILTIN_PROFILES, ConfigError, load_config, load_profile, read_secret

PASSWORD = "Pr0file-Relative-Pw"
KEY_TEXT = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


def site_profile(folder: Path, channels: dict[str, object]) -> Path:
    """Write ``site-a30.yaml`` (the built-in A30 profile plus ``channels``) into ``folder``."""
    data = yaml.safe_load((BUILTIN_PROFILES / "yealink-a30.yaml").read_text(encoding="utf-8"))
    data["name"] = "site-a30"
    data["channels"].update(channels)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site-a30.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_relative_channel_paths_resolve_beside_the_profile_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profiles = tmp_path / "site" / "profiles"
    (profiles / "secrets").mkdir(parents=True)
    (profiles / "secrets" / "ssh.pw").write_text(PASSWORD + "\n", encoding="utf-8")
    (profiles / "secrets" / "id_ed25519").write_text(KEY_TEXT, encoding="utf-8")
    (profiles / "secrets" / "community").write_text("s1te-community\n", encoding="utf-8")
    absolute = tmp_path / "elsewhere" / "events.xml"
    site_profile(
        profiles,
        {
            "ssh": {"password_file": "secrets/ssh.pw", "key_file": "secrets/id_ed25519", "status": "assumed"},
            "snmp": {"community_file": "secrets/community", "status": "assumed"},
            "mtr": {"xml_file": str(absolute), "status": "documented"},
        },
    )
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # relative paths must not depend on where the agent starts
    profile = load_profile("site-a30", [Path("../site/profiles")])
    ssh, snmp, mtr = profile.channels.ssh, profile.channels.snmp, profile.channels.mtr
    assert ssh is not None and snmp is not None and mtr is not None
    folder = profiles.resolve()
    assert ssh.password_file == folder / "secrets" / "ssh.pw"
    assert ssh.key_file == folder / "secrets" / "id_ed25519"
    assert snmp.community_file == folder / "secrets" / "community"
    assert mtr.xml_file == absolute  # an absolute path stays as given
    secrets = read_secrets(ssh, "profile site-a30", {})
    assert secrets.password == PASSWORD
    assert secrets.key_text == KEY_TEXT  # a key file is used as written, final line break included
    assert read_snmp_secrets(snmp, "profile site-a30", {}).community == "s1te-community"


def test_a_relative_mtr_xml_file_resolves_beside_the_profile(tmp_path: Path) -> None:
    site_profile(tmp_path / "p", {"mtr": {"xml_file": "exports/srs.xml", "status": "documented"}})
    mtr = load_profile("site-a30", [tmp_path / "p"]).channels.mtr
    assert mtr is not None and mtr.xml_file == (tmp_path / "p" / "exports" / "srs.xml").resolve()


def test_a_profile_without_paths_is_unchanged() -> None:
    assert load_profile("yealink-a30") == load_profile("yealink-a30")
    assert load_profile("yealink-a30").channels.tcp6024 is not None


def test_ssh_snmp_and_ymcs_secrets_share_one_reader_and_its_messages(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    cases = [
        (lambda: read_secrets(SshChannel(password_file=missing), "devices[0]", {}), "ssh.password_file"),
        (lambda: read_secrets(SshChannel(key_file=missing), "devices[0]", {}), "ssh.key_file"),
        (
            lambda: read_snmp_secrets(SnmpChannel(community_file=missing), "devices[0]", {}),
            "snmp.community_file",
        ),
    ]
    for read, key in cases:
        with pytest.raises(ConfigError) as caught:
            read()
        assert caught.value.lines == [f"{key}: file not found: {missing}"]
        assert caught.value.source == "devices[0]"
    with pytest.raises(ConfigError) as caught:
        read_snmp_secrets(SnmpChannel(community_env="HEZO_C"), "traps", {"HEZO_C": ""})
    assert caught.value.lines == ["snmp.community_env: environment variable HEZO_C is empty"]
    blank = tmp_path / "blank"
    blank.write_text(" \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"ssh\.key_file: .*blank is empty"):
        read_secrets(SshChannel(key_file=blank), "devices[0]", {})
    assert read_secret("V", None, "x.secret", "w", environ={"V": "from-mapping"}) == "from-mapping"


def test_the_ymcs_secret_and_ca_files_resolve_beside_the_config(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "agent.yaml"
    config.parent.mkdir()
    config.write_text(
        yaml.safe_dump(
            {
                "sites": [
                    {
                        "name": "hq",
                        "address": "ul. Prosta 1, Warszawa",
                        "contact": {"name": "Anna", "phone": "+48 22 555 01 23", "email": "it@example.pl"},
                    }
                ],
                "devices": [
                    {
                        "id": "a30",
                        "room": "Sala",
                        "site": "hq",
                        "model": "A30",
                        "host": "127.0.0.1",
                        "channels": {"ymcs": {"ymcs_id": "5f1c0e2a"}},
                    },
                ],
                "ymcs": {
                    "region": "eu",
                    "client_id": "cid",
                    "client_secret_file": "secrets/ymcs",
                    "ca_bundle": "ca.pem",
                },
            }
        ),
        encoding="utf-8",
    )
    cfg = load_config(config)
    assert cfg.ymcs is not None
    assert cfg.ymcs.client_secret_file == (tmp_path / "conf" / "secrets" / "ymcs").resolve()
    assert cfg.ymcs.ca_bundle == (tmp_path / "conf" / "ca.pem").resolve()
    assert cfg.ymcs.url == "https://eu-api.ymcs.yealink.com" and cfg.ymcs.cache_s == 55
    assert cfg.devices[0].channels["ymcs"].ymcs_id == "5f1c0e2a"
