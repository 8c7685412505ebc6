"""The SNMP channel against a real net-snmp snmpd, a real snmptrap, and hostile fake agents."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers.snmpd import SYS_DESCR, SYS_NAME, SYS_OBJECT_ID, Snmpd, free_udp_port, send_trap
from pyasn1.codec.ber import decoder, encoder
from pydantic import ValidationError
from pysnmp.proto.api import v1, v2c

from collectors.errors import AuthFailed, DeviceTimeout, DeviceUnreachable, UnexpectedResponse
from collectors.transports.snmp import (
    OID_IF_OPER_STATUS,
    OID_SYS_DESCR,
    OID_SYS_UPTIME,
    SnmpChannel,
    SnmpLoop,
    SnmpSecrets,
    SnmpTransport,
    SnmpValue,
    read_snmp_secrets,
)
from collectors.traps import TrapReceiver, TrapReceiverSettings
from config.loader import ConfigError

POLL_S = 0.02
LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
IF_INDEX_1 = "1.3.6.1.2.1.2.2.1.1.1"


@pytest.fixture(scope="module")
def loop() -> Iterator[SnmpLoop]:
    """A private SNMP loop for this module, stopped at the end."""
    snmp_loop = SnmpLoop(name="snmp-test-loop")
    yield snmp_loop
    snmp_loop.stop()
    assert not snmp_loop.running


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snmpd]:
    """One real snmpd for the whole module (started once: it takes ~0.1 s to answer)."""
    with Snmpd(tmp_path_factory.mktemp("snmpd")) as snmpd:
        yield snmpd


def v2c_transport(port: int, loop: SnmpLoop, community: str = "public", **kw: object) -> SnmpTransport:
    options: dict[str, object] = {"timeout_s": 0.5, "retries": 0} | kw
    return SnmpTransport("127.0.0.1", port, community=community, loop=loop, **options)  # type: ignore[arg-type]


def v3_transport(agent: Snmpd, loop: SnmpLoop, **kw: str) -> SnmpTransport:
    return SnmpTransport(
        "127.0.0.1",
        agent.port,
        version="3",
        user=kw.get("user", agent.user),
        auth_key=kw.get("auth_key", agent.auth_key),
        priv_key=kw.get("priv_key", agent.priv_key),
        timeout_s=0.5,
        retries=0,
        loop=loop,
    )


def wait_for(condition: Callable[[], bool], deadline_s: float = 3.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(POLL_S)
    return condition()


# --- real snmpd -------------------------------------------------------------------------------


def test_v2c_system_group_reads_descr_object_id_uptime_and_name(agent: Snmpd, loop: SnmpLoop) -> None:
    system = v2c_transport(agent.port, loop).system()
    assert system["sys_descr"] == SYS_DESCR
    assert system["sys_object_id"] == SYS_OBJECT_ID
    assert system["sys_name"] == SYS_NAME
    assert isinstance(system["sys_uptime_s"], int) and 0 <= system["sys_uptime_s"] < 3600


def test_get_returns_values_by_oid(agent: Snmpd, loop: SnmpLoop) -> None:
    got = v2c_transport(agent.port, loop).get([OID_SYS_DESCR, "." + OID_SYS_UPTIME])
    assert got[OID_SYS_DESCR] == SYS_DESCR
    assert isinstance(got[OID_SYS_UPTIME], int)


def test_walk_if_oper_status_lists_interfaces_with_names(agent: Snmpd, loop: SnmpLoop) -> None:
    transport = v2c_transport(agent.port, loop)
    rows = transport.walk(OID_IF_OPER_STATUS)
    assert rows and all(oid.startswith(OID_IF_OPER_STATUS + ".") for oid, _ in rows)
    interfaces = transport.interfaces()
    assert len(interfaces) == len(rows)
    loopback = [i for i in interfaces if i["descr"] == "lo"]
    assert loopback and loopback[0]["oper_status"] == "up"


def test_probe_reports_the_snmp_channel_with_system_and_interface_fields(
    agent: Snmpd, loop: SnmpLoop
) -> None:
    result = v2c_transport(agent.port, loop).probe()
    assert (result.channel, result.ok, result.reason) == ("snmp", True, "ok")
    assert result.fields["sys_object_id"] == SYS_OBJECT_ID
    assert result.fields["sys_descr"] == SYS_DESCR
    assert isinstance(result.fields["if_oper_up"], int) and result.fields["if_oper_up"] >= 1
    assert result.latency_ms > 0


def test_walk_stops_at_max_rows(agent: Snmpd, loop: SnmpLoop) -> None:
    rows = v2c_transport(agent.port, loop).walk("1.3.6.1.2.1", max_rows=7)
    assert len(rows) == 7
    assert rows[0] == (OID_SYS_DESCR, SYS_DESCR)
    oids = [tuple(int(n) for n in oid.split(".")) for oid, _ in rows]
    assert oids == sorted(oids) and len(set(oids)) == 7


def test_v3_auth_priv_reads_the_system_group(agent: Snmpd, loop: SnmpLoop) -> None:
    assert v3_transport(agent, loop).system()["sys_name"] == SYS_NAME


def test_v3_wrong_auth_key_is_auth_failed(agent: Snmpd, loop: SnmpLoop) -> None:
    with pytest.raises(AuthFailed) as caught:
        v3_transport(agent, loop, auth_key="not-the-auth-key").system()
    assert "not-the-auth-key" not in str(caught.value)


def test_v3_wrong_priv_key_is_silence_so_a_timeout(agent: Snmpd, loop: SnmpLoop) -> None:
    # net-snmp cannot decrypt the request and drops it without a report: no way to tell apart
    with pytest.raises(DeviceTimeout):
        v3_transport(agent, loop, priv_key="not-the-priv-key").get([OID_SYS_DESCR])


def test_v3_unknown_user_is_auth_failed(agent: Snmpd, loop: SnmpLoop) -> None:
    with pytest.raises(AuthFailed):
        v3_transport(agent, loop, user="nobody").get([OID_SYS_DESCR])


def test_wrong_community_is_silence_so_a_timeout_within_the_timeout(agent: Snmpd, loop: SnmpLoop) -> None:
    started = time.monotonic()
    with pytest.raises(DeviceTimeout) as caught:
        v2c_transport(agent.port, loop, community="secret-wrong", timeout_s=0.3).system()
    assert time.monotonic() - started < 1.5
    assert "secret-wrong" not in str(caught.value)


def test_nothing_listening_is_a_timeout_or_unreachable_within_the_timeout(loop: SnmpLoop) -> None:
    started = time.monotonic()
    with pytest.raises((DeviceTimeout, DeviceUnreachable)):
        v2c_transport(free_udp_port(), loop, timeout_s=0.3, retries=1).get([OID_SYS_DESCR])
    assert time.monotonic() - started < 2.0


def test_missing_object_is_unexpected_response(agent: Snmpd, loop: SnmpLoop) -> None:
    with pytest.raises(UnexpectedResponse, match="noSuchObject"):
        v2c_transport(agent.port, loop).get(["1.3.6.1.2.1.1.99.0"])


def test_a_silent_device_does_not_delay_another_on_the_shared_loop(agent: Snmpd, loop: SnmpLoop) -> None:
    silent = v2c_transport(free_udp_port(), loop, timeout_s=1.0)
    errors: list[Exception] = []

    def poll_silent() -> None:
        try:
            silent.get([OID_SYS_DESCR])
        except DeviceTimeout as err:
            errors.append(err)

    thread = threading.Thread(target=poll_silent)
    thread.start()
    started = time.monotonic()
    assert v2c_transport(agent.port, loop).system()["sys_name"] == SYS_NAME
    assert time.monotonic() - started < 0.5
    thread.join(3.0)
    assert len(errors) == 1


# --- hostile agents ---------------------------------------------------------------------------


class FakeAgent:
    """A UDP 'agent' on loopback that answers each datagram with whatever ``reply`` returns."""

    def __init__(self, reply: Callable[[bytes], list[bytes]]) -> None:
        self.reply = reply
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.requests += 1
            for answer in self.reply(data):
                self.sock.sendto(answer, addr)

    def __enter__(self) -> FakeAgent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()


def answer(request: bytes, varbinds: list[tuple[str, SnmpValue]]) -> bytes:
    """A well-formed v2c Response to ``request`` carrying ``varbinds``."""
    message, _ = decoder.decode(request, asn1Spec=v2c.Message())
    response = v2c.apiMessage.get_response(message)
    pdu = v2c.apiMessage.get_pdu(response)
    v2c.apiPDU.set_varbinds(pdu, [(v2c.ObjectIdentifier(oid), value) for oid, value in varbinds])
    return bytes(encoder.encode(response))


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(lambda _: [b"\x00\xff garbage \x30\x82"], id="binary-garbage"),
        pytest.param(lambda _: [b"\x30\x84\xff\xff\xff\xff" + b"A" * 60_000], id="huge-datagram"),
        pytest.param(lambda _: [bytes([n % 256]) * 64 for n in range(300)], id="endless-datagrams"),
        pytest.param(lambda req: [req], id="echo-request"),
    ],
)
def test_garbage_answers_end_within_the_timeout_and_the_loop_keeps_serving(
    agent: Snmpd, loop: SnmpLoop, reply: Callable[[bytes], list[bytes]]
) -> None:
    with FakeAgent(reply) as fake:
        started = time.monotonic()
        with pytest.raises(DeviceTimeout):  # pysnmp drops what it cannot decode: silence
            v2c_transport(fake.port, loop, timeout_s=0.3, retries=1).system()
        assert time.monotonic() - started < 2.0
        assert fake.requests == 2  # one try and one retry, no more
    assert loop.running
    assert v2c_transport(agent.port, loop).system()["sys_name"] == SYS_NAME


def test_wrong_value_types_are_unexpected_response(loop: SnmpLoop) -> None:
    def reply(request: bytes) -> list[bytes]:
        message, _ = decoder.decode(request, asn1Spec=v2c.Message())
        oids = [".".join(map(str, o)) for o, _ in v2c.apiPDU.get_varbinds(v2c.apiMessage.get_pdu(message))]
        return [answer(request, [(oid, v2c.OctetString("not a number")) for oid in oids])]

    with FakeAgent(reply) as fake, pytest.raises(UnexpectedResponse, match="wrong type"):
        v2c_transport(fake.port, loop).system()


def test_answer_for_other_oids_is_unexpected_response(loop: SnmpLoop) -> None:
    other = FakeAgent(lambda req: [answer(req, [("1.3.6.1.9.9.9", v2c.Integer(1))])])
    with other as fake, pytest.raises(UnexpectedResponse, match="asked"):
        v2c_transport(fake.port, loop).get([OID_SYS_DESCR])


def test_walk_with_oids_that_do_not_increase_is_unexpected_response(loop: SnmpLoop) -> None:
    looping = f"{OID_IF_OPER_STATUS}.1"
    with FakeAgent(lambda req: [answer(req, [(looping, v2c.Integer(1))] * 3)]) as fake:
        started = time.monotonic()
        with pytest.raises(UnexpectedResponse, match="not increasing"):
            v2c_transport(fake.port, loop).walk(OID_IF_OPER_STATUS, max_rows=100)
        assert time.monotonic() - started < 1.0


# --- traps ------------------------------------------------------------------------------------


class Traps:
    """Collects callbacks from a receiver."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, list[tuple[str, SnmpValue]]]] = []

    def __call__(self, source_ip: str, trap_oid: str, varbinds: list[tuple[str, SnmpValue]]) -> None:
        self.seen.append((source_ip, trap_oid, varbinds))


def v1_trap(community: str) -> bytes:
    """An SNMPv1 Trap-PDU message (the receiver takes v2c only)."""
    pdu = v1.TrapPDU()
    v1.apiTrapPDU.set_defaults(pdu)
    message = v1.Message()
    v1.apiMessage.set_defaults(message)
    v1.apiMessage.set_community(message, community)
    v1.apiMessage.set_pdu(message, pdu)
    return bytes(encoder.encode(message))


def v2c_get_request(community: str) -> bytes:
    """A v2c GetRequest (not a notification)."""
    pdu = v2c.GetRequestPDU()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_varbinds(pdu, [(v2c.ObjectIdentifier(OID_SYS_DESCR), v2c.null)])
    message = v2c.Message()
    v2c.apiMessage.set_defaults(message)
    v2c.apiMessage.set_community(message, community)
    v2c.apiMessage.set_pdu(message, pdu)
    return bytes(encoder.encode(message))


@pytest.fixture
def receiver(loop: SnmpLoop) -> Iterator[tuple[TrapReceiver, Traps]]:
    traps = Traps()
    settings = TrapReceiverSettings(port=0, community_env="TRAP_COMMUNITY")
    community = read_snmp_secrets(settings, "traps", {"TRAP_COMMUNITY": "public"}).community
    assert community == "public"
    with TrapReceiver.from_settings(traps, settings, community, loop=loop) as trap_receiver:
        assert trap_receiver.port != 0 and "public" not in repr(trap_receiver)
        yield trap_receiver, traps


def test_trap_from_snmptrap_calls_back_with_source_and_trap_oid(
    receiver: tuple[TrapReceiver, Traps], tmp_path: Path
) -> None:
    trap_receiver, traps = receiver
    send_trap(trap_receiver.port, "public", LINK_DOWN, [(IF_INDEX_1, "i", "1")], folder=tmp_path)
    assert wait_for(lambda: len(traps.seen) == 1)
    assert traps.seen[0] == ("127.0.0.1", LINK_DOWN, [(IF_INDEX_1, 1)])
    assert trap_receiver.stats.delivered == 1


def test_inform_is_acknowledged_and_delivered(receiver: tuple[TrapReceiver, Traps], tmp_path: Path) -> None:
    trap_receiver, traps = receiver
    send_trap(trap_receiver.port, "public", LINK_DOWN, folder=tmp_path, inform=True)  # fails without an ack
    assert wait_for(lambda: len(traps.seen) == 1)


def test_garbage_and_unknown_communities_are_counted_and_the_next_trap_still_arrives(
    receiver: tuple[TrapReceiver, Traps], tmp_path: Path
) -> None:
    trap_receiver, traps = receiver
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for junk in (b"", b"\x00\xff\x13", b"\x30\x03\x02\x01\x01", b"\x30\x82\xff\xff" + b"x" * 100):
            sender.sendto(junk, ("127.0.0.1", trap_receiver.port))
        sender.sendto(b"\x30" * 9000, ("127.0.0.1", trap_receiver.port))
        for message in (v1_trap("public"), v2c_get_request("public")):
            sender.sendto(message, ("127.0.0.1", trap_receiver.port))
    send_trap(trap_receiver.port, "not-public", LINK_DOWN, folder=tmp_path)
    send_trap(trap_receiver.port, "public", LINK_DOWN, [(IF_INDEX_1, "i", "7")], folder=tmp_path)
    assert wait_for(lambda: len(traps.seen) == 1)
    assert traps.seen[0][2] == [(IF_INDEX_1, 7)]
    stats = trap_receiver.stats
    counts = (stats.received, stats.malformed, stats.oversized, stats.unsupported, stats.unknown_community)
    assert counts == (9, 4, 1, 2, 1)


def test_a_failing_callback_is_counted_and_the_receiver_keeps_going(loop: SnmpLoop, tmp_path: Path) -> None:
    calls: list[str] = []

    def on_trap(source_ip: str, trap_oid: str, varbinds: list[tuple[str, SnmpValue]]) -> None:
        calls.append(trap_oid)
        if len(calls) == 1:
            raise RuntimeError("callback bug")

    with TrapReceiver(on_trap, ["public"], port=0, loop=loop) as trap_receiver:
        send_trap(trap_receiver.port, "public", LINK_DOWN, folder=tmp_path)
        send_trap(trap_receiver.port, "public", "1.3.6.1.6.3.1.1.5.4", folder=tmp_path)
        assert wait_for(lambda: len(calls) == 2)
        assert wait_for(
            lambda: trap_receiver.stats.callback_errors == 1 and trap_receiver.stats.delivered == 1
        )


# --- settings and secrets ---------------------------------------------------------------------


def test_settings_need_one_source_per_secret() -> None:
    assert SnmpChannel(community_env="SNMP_COMMUNITY").status == "assumed"
    assert SnmpChannel(version="3", user="hezo", auth_key_env="A", priv_key_env="P").port == 161
    with pytest.raises(ValidationError, match="community_env or community_file"):
        SnmpChannel()
    with pytest.raises(ValidationError, match="only one of community_env or community_file"):
        SnmpChannel(community_env="C", community_file=Path("c.txt"))
    with pytest.raises(ValidationError, match="version 3"):
        SnmpChannel(version="3", auth_key_env="A")
    with pytest.raises(ValidationError, match="exactly one"):
        TrapReceiverSettings()


def test_secrets_come_from_env_or_file_and_never_show(tmp_path: Path, agent: Snmpd, loop: SnmpLoop) -> None:
    key_file = tmp_path / "auth.key"
    key_file.write_text(agent.auth_key + "\n", encoding="utf-8")
    settings = SnmpChannel(
        version="3", user=agent.user, auth_key_file=key_file, priv_key_env="PRIV", port=agent.port
    )
    secrets = read_snmp_secrets(settings, "devices[0]", {"PRIV": agent.priv_key})
    assert secrets == SnmpSecrets(None, agent.auth_key, agent.priv_key)
    assert agent.auth_key not in repr(secrets) and agent.priv_key not in repr(secrets)
    transport = SnmpTransport.from_settings("127.0.0.1", settings, secrets, loop=loop)
    assert agent.auth_key not in repr(transport)
    assert transport.system()["sys_object_id"] == SYS_OBJECT_ID
    with pytest.raises(ConfigError, match="PRIV is not set"):
        read_snmp_secrets(settings, "devices[0]", {})
