"""The SSH channel against a real OpenSSH sshd on loopback, and against hostile TCP peers."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
from peers.sshd import Sshd, free_port
from pydantic import ValidationError

from collectors.errors import (
    AuthFailed,
    DeviceTimeout,
    DeviceUnreachable,
    IdentityChanged,
    UnexpectedResponse,
)
from collectors.known_hosts import HostKey, KnownHosts, fingerprint_sha256
from collectors.transports.ssh import (
    WIRE_LOGGER,
    SshChannel,
    SshCommand,
    SshSecrets,
    SshTransport,
    read_secrets,
)
from collectors.transports.ssh_io import BANNER_MAX_BYTES, HANDSHAKE_MAX_BYTES
from config.loader import ConfigError

PASSWORD = "Tajne-haslo-7f3a9c"  # a made-up secret that must never show up anywhere


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """One sshd for the tests that do not restart it."""
    with Sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def transport(sshd: Sshd, known: KnownHosts, **kwargs: object) -> SshTransport:
    options: dict[str, object] = {"key_path": sshd.client_key, "timeout_s": 3.0}
    options.update(kwargs)
    return SshTransport("127.0.0.1", port=sshd.port, username=sshd.user, known_hosts=known, **options)  # type: ignore[arg-type]


def public_key(sshd: Sshd, name: str = "host") -> HostKey:
    key_type, b64 = sshd.host_public_key(name).split()
    return HostKey(key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(b64)).asbytes())


# --- host keys: trust on first use, and a change sends no credential ---------------------------


def test_first_login_trusts_the_host_key_and_stores_it_in_the_agents_file(sshd: Sshd, tmp_path: Path) -> None:
    known = KnownHosts(tmp_path / "data" / "known_hosts")
    result = transport(sshd, known).probe()
    assert result.ok and result.channel == "ssh" and result.reason == "ok"
    assert 0 < result.latency_ms < 3000
    line = (tmp_path / "data" / "known_hosts").read_text()
    assert line == f"[127.0.0.1]:{sshd.port} {sshd.host_public_key()}\n"
    assert result.fields["ssh_host_key"] == public_key(sshd).fingerprint
    assert str(result.fields["ssh_banner"]).startswith("SSH-2.0-OpenSSH")


def test_second_login_with_the_same_key_is_accepted_and_the_file_is_unchanged(
    sshd: Sshd, tmp_path: Path
) -> None:
    path = tmp_path / "known_hosts"
    transport(sshd, KnownHosts(path)).probe()
    before = path.read_bytes()
    assert transport(sshd, KnownHosts(path)).probe().ok
    assert path.read_bytes() == before


def test_changed_host_key_raises_identity_changed_before_any_credential_is_sent(tmp_path: Path) -> None:
    with Sshd(tmp_path / "sshd", log_level="DEBUG1") as server:
        path = tmp_path / "known_hosts"
        transport(server, KnownHosts(path)).probe()
        trusted = path.read_bytes()
        server.restart(host_key="other")
        mark = server.log_mark()
        with pytest.raises(IdentityChanged) as caught:
            transport(server, KnownHosts(path), password=PASSWORD).probe()
        message = str(caught.value)
        assert f"[127.0.0.1]:{server.port}" in message and "ssh-ed25519" in message
        assert public_key(server, "host").fingerprint in message
        assert public_key(server, "other").fingerprint in message
        assert PASSWORD not in message
        assert path.read_bytes() == trusted  # never silently re-trusted
        assert server.wait_for_log("[preauth]", mark) and _wait_connection_gone(server, mark)
        log = server.log_since(mark)
        assert "KEX done" in log  # the key exchange ran ...
        for sign in ("userauth-request", "Accepted", "Failed", "publickey", "password"):
            assert sign not in log  # ... and nothing of a login followed it

        # control: the same log does show a login attempt when one is made
        mark = server.log_mark()
        assert transport(server, KnownHosts(None)).probe().ok
        assert server.wait_for_log("Accepted publickey", mark)
        assert "userauth-request" in server.log_since(mark)


def _wait_connection_gone(server: Sshd, mark: int) -> bool:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        log = server.log_since(mark)
        if "Connection reset by" in log or "Connection closed by" in log or "Disconnected from" in log:
            return True
        time.sleep(0.02)
    return False


def test_known_hosts_reads_hashed_openssh_lines_and_forgets_on_request(tmp_path: Path) -> None:
    key = HostKey("ssh-ed25519", b"\x00\x00\x00\x0bssh-ed25519" + bytes(36))
    path = tmp_path / "known_hosts"
    hashed = paramiko.HostKeys.hash_host("[10.0.0.5]:2222")
    path.write_text(f"# operator notes\n{hashed} ssh-ed25519 {base64.b64encode(key.blob).decode()}\n")
    known = KnownHosts(path)
    assert known.keys_for("10.0.0.5", 2222) == [key]
    assert known.verify("10.0.0.5", 2222, key) is False
    other = HostKey("ssh-rsa", b"other")
    with pytest.raises(IdentityChanged, match=r"known ssh-ed25519 SHA256:.*offered ssh-rsa SHA256:"):
        known.verify("10.0.0.5", 2222, other)
    assert known.verify("10.0.0.6", 22, other) is True
    assert path.read_text().endswith(f"10.0.0.6 ssh-rsa {base64.b64encode(b'other').decode()}\n")
    assert path.read_text().startswith("# operator notes\n")
    assert known.forget("10.0.0.6", 22) and not known.forget("10.0.0.6", 22)
    assert fingerprint_sha256(b"other") == other.fingerprint


# --- login ---------------------------------------------------------------------------------------


def test_rejected_password_is_auth_failed_and_the_password_is_never_logged(
    sshd: Sshd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger=WIRE_LOGGER)
    ssh = SshTransport(
        "127.0.0.1", port=sshd.port, username=sshd.user, known_hosts=KnownHosts(None), password=PASSWORD
    )
    started = time.monotonic()
    with pytest.raises(AuthFailed) as caught:
        ssh.probe()
    assert time.monotonic() - started < 5
    assert "password" in str(caught.value) and PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(ssh) and PASSWORD not in caplog.text
    assert "Authentication" in caplog.text  # paramiko's debug lines were captured, without the secret


def test_settings_read_secrets_from_env_and_run_named_status_commands(sshd: Sshd, tmp_path: Path) -> None:
    settings = SshChannel(
        port=sshd.port,
        username=sshd.user,
        key_env="HEZO_TEST_SSH_KEY",
        commands=(SshCommand(name="kernel", command="uname -s"), SshCommand(name="who", command="id -un")),
        timeout_s=3,
    )
    secrets = read_secrets(settings, "devices[0]", {"HEZO_TEST_SSH_KEY": sshd.client_key.read_text()})
    assert "BEGIN" not in repr(secrets)
    result = SshTransport.from_settings("127.0.0.1", settings, secrets, KnownHosts(None)).probe()
    assert result.ok, result.detail
    assert result.fields["kernel"] == "Linux" and result.fields["who"] == sshd.user


def test_settings_reject_missing_or_double_secrets_without_echoing_them(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="give password_env, password_file, key_file or key_env"):
        SshChannel()
    with pytest.raises(ValidationError, match="only one of password_env or password_file"):
        SshChannel(password_env="X", password_file=tmp_path / "pw")
    with pytest.raises(ValidationError, match="unique"):
        SshChannel.model_validate(
            {"password_env": "X", "commands": [{"name": "a", "command": "x"}, {"name": "a", "command": "y"}]}
        )
    with pytest.raises(ConfigError, match=r"ssh.password_env: environment variable HEZO_NOPE is not set"):
        read_secrets(SshChannel(password_env="HEZO_NOPE"), "devices[0]", {})
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    assert read_secrets(SshChannel(password_file=tmp_path / "pw"), "d", {}).password == PASSWORD
    assert PASSWORD not in repr(SshSecrets(password=PASSWORD))
    with pytest.raises(ValueError, match="not a private key") as caught:
        SshTransport("127.0.0.1", username="u", known_hosts=KnownHosts(None), key_text=PASSWORD)
    assert PASSWORD not in str(caught.value)


def test_probe_reports_a_failing_status_command_but_keeps_what_it_learned(sshd: Sshd) -> None:
    result = transport(sshd, KnownHosts(None)).probe(["echo first", "echo nope >&2; exit 3"])
    assert not result.ok and result.reason == "unexpected_response"
    assert "exit status 3" in result.detail
    assert result.fields["echo first"] == "first"


# --- commands ------------------------------------------------------------------------------------


def test_run_returns_stdout_stderr_and_exit_status(sshd: Sshd) -> None:
    with transport(sshd, KnownHosts(None)) as ssh:
        result = ssh.run("printf 'hello\\n'; printf 'oops\\n' >&2; exit 2", timeout_s=3, max_bytes=4096)
        again = ssh.run("echo again", timeout_s=3)  # same connection, a second session
    assert result.stdout == b"hello\n" and result.stderr == b"oops\n"
    assert result.exit_status == 2 and not result.truncated and result.elapsed_ms > 0
    assert again.text == "again\n" and again.exit_status == 0


def test_endless_output_is_cut_at_the_byte_cap(sshd: Sshd) -> None:
    with transport(sshd, KnownHosts(None)) as ssh:
        started = time.monotonic()
        result = ssh.run("yes", timeout_s=5, max_bytes=65536)
        elapsed = time.monotonic() - started
        huge_line = ssh.run("head -c 3000000 /dev/zero | tr '\\0' x", timeout_s=5, max_bytes=10000)
    assert result.truncated and result.exit_status is None
    assert len(result.stdout) + len(result.stderr) == 65536
    assert result.stdout.startswith(b"y\ny\n") and elapsed < 3
    assert huge_line.truncated and len(huge_line.stdout) + len(huge_line.stderr) == 10000


def test_command_past_its_deadline_raises_timeout_quickly(sshd: Sshd, tmp_path: Path) -> None:
    pid_file = tmp_path / "hung.pid"
    try:
        with transport(sshd, KnownHosts(None)) as ssh:
            started = time.monotonic()
            with pytest.raises(DeviceTimeout, match=r"still running after 0\.5 s"):
                ssh.run(f"echo $$ > {pid_file}; exec tail -f /dev/null", timeout_s=0.5)
            assert time.monotonic() - started < 1.5
            assert ssh.run("echo alive", timeout_s=3).text == "alive\n"  # the connection survives
    finally:
        # sshd cannot signal a root session's command; end the orphan by its own PID
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_slow_drip_output_still_ends_at_the_deadline(sshd: Sshd) -> None:
    with transport(sshd, KnownHosts(None)) as ssh:
        started = time.monotonic()
        with pytest.raises(DeviceTimeout):
            ssh.run("for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.2; done", timeout_s=0.6)
        assert time.monotonic() - started < 1.5


# --- files ---------------------------------------------------------------------------------------


def test_fetch_streams_a_file_to_disk_with_its_sha256(sshd: Sshd, tmp_path: Path) -> None:
    data = random.Random(4).randbytes(300_000)
    (tmp_path / "device.log").write_bytes(data)
    dest = tmp_path / "out" / "device.log"
    dest.parent.mkdir()
    with transport(sshd, KnownHosts(None)) as ssh:
        size, sha256 = ssh.fetch(str(tmp_path / "device.log"), dest, timeout_s=5, max_bytes=1_000_000)
    assert (size, sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    assert list(dest.parent.iterdir()) == [dest]


def test_fetch_over_the_cap_removes_the_partial_file(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "big.log").write_bytes(b"x" * 200_000)
    out = tmp_path / "out"
    out.mkdir()
    with transport(sshd, KnownHosts(None)) as ssh:
        with pytest.raises(UnexpectedResponse, match="over 100000"):
            ssh.fetch(str(tmp_path / "big.log"), out / "big.log", max_bytes=100_000)
        # /dev/zero announces size 0: the cap must hold while streaming
        with pytest.raises(UnexpectedResponse, match="over 100000 bytes"):
            ssh.fetch("/dev/zero", out / "zero", timeout_s=5, max_bytes=100_000)
        with pytest.raises(UnexpectedResponse, match="no such file"):
            ssh.fetch(str(tmp_path / "missing.log"), out / "missing.log", max_bytes=100_000)
    assert list(out.iterdir()) == []


def test_fetch_into_a_missing_local_folder_is_a_local_error(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("a\n")
    with transport(sshd, KnownHosts(None)) as ssh, pytest.raises(FileNotFoundError):
        ssh.fetch(str(tmp_path / "a.log"), tmp_path / "no" / "a.log", max_bytes=1000)


# --- unreachable and hostile peers ---------------------------------------------------------------


def test_refused_port_is_unreachable(tmp_path: Path) -> None:
    ssh = SshTransport(
        "127.0.0.1", port=free_port(), username="u", known_hosts=KnownHosts(None), password=PASSWORD
    )
    with pytest.raises(DeviceUnreachable, match="refused"):
        ssh.probe()


Behaviour = Callable[[socket.socket, threading.Event], None]


def _drip(text: bytes, pause_s: float) -> Behaviour:
    def act(conn: socket.socket, stop: threading.Event) -> None:
        for byte in text:
            if stop.wait(pause_s):
                return
            conn.sendall(bytes([byte]))
        stop.wait(5)

    return act


def _send(first: bytes, then: bytes = b"", close: bool = False) -> Behaviour:
    def act(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(first)
        while then and not stop.is_set():
            conn.sendall(then)
        if not close:
            stop.wait(5)

    return act


@contextlib.contextmanager
def hostile_server(behaviour: Behaviour) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that treats every client with ``behaviour``."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _addr = listener.accept()
            with conn, contextlib.suppress(OSError):
                behaviour(conn, stop)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(5)


# case: (peer behaviour, error, words in its message, most bytes the client may read)
HOSTILE: dict[str, tuple[Behaviour, type[Exception], str, int]] = {
    "silent": (_send(b""), DeviceTimeout, "no SSH banner within 0.6 s", 0),
    "closes at once": (_send(b"", close=True), DeviceUnreachable, "closed before the SSH banner", 0),
    "slow banner drip": (
        _drip(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n", 0.1),
        DeviceTimeout,
        "no SSH banner within",
        64,
    ),
    "http answer": (
        _send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
        UnexpectedResponse,
        "not an SSH server (sent 'HTTP/1.1 400",
        64,
    ),
    "text then close": (_send(b"220 ftp ready\r\n", close=True), UnexpectedResponse, "sent '220 ftp", 64),
    "binary garbage": (_send(bytes(range(256)) * 4), UnexpectedResponse, "binary bytes", BANNER_MAX_BYTES),
    "huge line": (
        _send(b"A" * 1024, then=b"A" * 65536),
        UnexpectedResponse,
        f"over {BANNER_MAX_BYTES} bytes before an SSH banner",
        BANNER_MAX_BYTES,
    ),
    "endless lines": (
        _send(b"hello\r\n", then=b"hello\r\n" * 1000),
        UnexpectedResponse,
        "not an SSH server (sent 'hello",
        BANNER_MAX_BYTES,
    ),
    "banner then silence": (
        _send(b"SSH-2.0-OpenSSH_9.9\r\n"),
        DeviceTimeout,
        "key exchange not complete within 0.6 s",
        64,
    ),
    "banner then garbage": (
        _send(b"SSH-2.0-OpenSSH_9.9\r\n", then=random.Random(1).randbytes(65536)),
        UnexpectedResponse,
        "key exchange failed",
        HANDSHAKE_MAX_BYTES,
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_peer_ends_within_the_timeout_and_the_byte_cap(case: str) -> None:
    behaviour, error, words, cap = HOSTILE[case]
    with hostile_server(behaviour) as port:
        ssh = SshTransport(
            "127.0.0.1",
            port=port,
            username="u",
            known_hosts=KnownHosts(None),
            password=PASSWORD,
            timeout_s=0.6,
        )
        started = time.monotonic()
        with pytest.raises(error, match=re.escape(words)) as caught:
            ssh.probe()
        elapsed = time.monotonic() - started
    assert elapsed < 0.6 + 0.5, f"{case}: took {elapsed:.2f} s"
    assert ssh.bytes_read <= cap, f"{case}: read {ssh.bytes_read} bytes"
    assert PASSWORD not in str(caught.value)
