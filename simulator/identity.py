"""Deterministic identities for a simulated fleet: ids, serials, MACs, firmware, sites, rooms.

Everything here follows from ``seed`` and the device index, so the same seed always gives the
same fleet (certificates and ports aside).
"""

from __future__ import annotations

import random
import socket
import string
from dataclasses import dataclass

MODEL_CYCLE = ("A30", "A20", "MVC")
SERIAL_PREFIX = {"A20": "8020", "A30": "8030", "MVC": "8086"}
YEALINK_OUI = "00:15:65"
SITES = ("warszawa-hq", "krakow-office")
ROOMS = {
    "warszawa-hq": (
        "Sala Zarząd",
        "Sala Wisła",
        "Sala Chopin",
        "Sala Łazienki",
        "Sala Mokotów",
        "Sala Żoliborz",
        "Sala Praga",
        "Sala Wilanów",
        "Sala Powiśle",
        "Sala Ochota",
    ),
    "krakow-office": (
        "Sala Wawel",
        "Sala Kazimierz",
        "Sala Sukiennice",
        "Sala Podgórze",
        "Sala Nowa Huta",
        "Sala Kopiec Kościuszki",
        "Sala Planty",
        "Sala Zabłocie",
        "Sala Dębniki",
        "Sala Tyniec",
    ),
}
# Teams firmware on A20/A30 reads 133.15.x.x, Zoom 133.30.x.x, MVC NN.11.x.x (yealink-facts.md).
TEAMS_FIRMWARE = ("133.15.0.76", "133.15.0.76", "133.15.0.76", "133.15.0.68", "133.15.0.63")
ZOOM_FIRMWARE = ("133.30.0.62", "133.30.0.66")
MVC_FIRMWARE = ("126.11.0.25", "126.11.0.25", "126.11.0.21")
ADMIN_USER = "admin"
PERIPHERAL_NAMES = {
    "A20": {
        "camera": "A20 camera",
        "microphone": "A20 microphone array",
        "speaker": "A20 speaker",
        "touch_panel": "CTP18 touch panel",
    },
    "A30": {
        "camera": "A30 dual camera",
        "microphone": "A30 microphone array",
        "speaker": "A30 speaker",
        "touch_panel": "CTP18 touch panel",
    },
    "MVC": {
        "camera": "UVC86 camera",
        "microphone": "VCM34 microphone",
        "speaker": "MSpeaker II",
        "touch_panel": "MTouch II touch panel",
    },
}


@dataclass(frozen=True)
class SimDevice:
    """Public description of one simulated device."""

    id: str
    model: str
    host: str
    port: int
    serial: str
    mac: str
    firmware: str
    hostname: str
    site: str
    room: str
    username: str
    password: str
    cert_sha256: str
    vcapi_port: int | None = None  # the 6024 control API, when the fleet serves it
    ssh_port: int | None = None  # SSH (TCP), when the fleet serves it
    snmp_port: int | None = None  # SNMP (UDP), when the fleet serves it

    @property
    def base_url(self) -> str:
        """Return ``https://host:port`` (the port is final only after ``Fleet.start``)."""
        return f"https://{self.host}:{self.port}"

    def __repr__(self) -> str:
        """Show the device without its password."""
        return f"SimDevice(id={self.id!r}, model={self.model!r}, address={self.host}:{self.port})"


@dataclass(frozen=True)
class Identity:
    """The seed-derived part of a device (everything but the certificate)."""

    index: int
    id: str
    model: str
    serial: str
    mac: str
    firmware: str
    hostname: str
    site: str
    room: str
    initial_uptime_s: int


def admin_password(seed: int) -> str:
    """Return the fleet's admin password, derived from ``seed`` (the same for all devices)."""
    rng = random.Random(f"hezo-sim:{seed}:password")
    alphabet = string.ascii_letters + string.digits
    return "".join(rng.choice(alphabet) for _ in range(16))


def device_address(index: int, net: int) -> str:
    """Return the loopback address of device ``index`` (0-based): 127.net.a.b, b in 1..254.

    Raises:
        ValueError: ``net`` is outside 0..255 or the index does not fit in the /16.
    """
    if not 0 <= net <= 255:
        raise ValueError(f"net must be 0..255, got {net}")
    high, low = divmod(index, 254)
    if high > 255:
        raise ValueError(f"too many devices for one 127.{net}.0.0/16 network")
    return f"127.{net}.{high}.{low + 1}"


def can_bind(host: str) -> bool:
    """Return whether a TCP socket can bind ``host`` (false on systems with only 127.0.0.1)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


def plan_identities(count: int, seed: int) -> list[Identity]:
    """Return ``count`` identities: models cycle A30, A20, MVC; sites alternate.

    Raises:
        ValueError: ``count`` is less than 1.
    """
    if count < 1:
        raise ValueError(f"devices must be at least 1, got {count}")
    serials: set[str] = set()
    macs: set[str] = set()
    per_site = dict.fromkeys(SITES, 0)
    out: list[Identity] = []
    for index in range(count):
        rng = random.Random(f"hezo-sim:{seed}:{index}")
        model = MODEL_CYCLE[index % len(MODEL_CYCLE)]
        serial = SERIAL_PREFIX[model] + "".join(rng.choice(string.digits) for _ in range(12))
        while serial in serials:
            serial = SERIAL_PREFIX[model] + "".join(rng.choice(string.digits) for _ in range(12))
        serials.add(serial)
        mac = _mac(rng)
        while mac in macs:
            mac = _mac(rng)
        macs.add(mac)
        if model == "MVC":
            firmware = rng.choice(MVC_FIRMWARE)
        elif rng.random() < 0.15:
            firmware = rng.choice(ZOOM_FIRMWARE)
        else:
            firmware = rng.choice(TEAMS_FIRMWARE)
        site = SITES[index % len(SITES)]
        rooms = ROOMS[site]
        slot = per_site[site]
        per_site[site] += 1
        room = rooms[slot % len(rooms)] + (f" {slot // len(rooms) + 1}" if slot >= len(rooms) else "")
        out.append(
            Identity(
                index=index,
                id=f"{model.lower()}-{index + 1:02d}",
                model=model,
                serial=serial,
                mac=mac,
                firmware=firmware,
                hostname=f"{model}-{serial[-4:]}",
                site=site,
                room=room,
                initial_uptime_s=rng.randint(3_600, 30 * 86_400),
            )
        )
    return out


def _mac(rng: random.Random) -> str:
    return YEALINK_OUI + "".join(f":{rng.randrange(256):02x}" for _ in range(3))
