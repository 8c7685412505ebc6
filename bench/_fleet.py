"""The simulated fleet in its own process (``hezo-sim run``), so its CPU is never counted as the agent's."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from _common import bench_env, python, stop_process, wait_for

from config.loader import load_profile, profile_name


class SimProcess:
    """``hezo-sim run`` as a child process, with its written agent config and control API.

    ``port`` 0 gives every device ephemeral ports (also for SSH); a fixed port puts every device's
    HTTPS (and SSH on ``ssh_port``) on that port of its own loopback address.
    """

    def __init__(
        self,
        workdir: Path,
        devices: int,
        *,
        net: int,
        name: str = "sim",
        log_bytes: int = 100_000,
        ssh_port: int | None = None,
        vcapi_port: int = 0,
        port: int = 0,
    ) -> None:
        self.workdir = workdir
        self.devices = devices
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.out"
        cmd = [python(), "-m", "simulator.cli", "run", "--devices", str(devices), "--net", str(net)]
        cmd += ["--port", str(port), "--control-port", "0", "--vcapi-port", str(vcapi_port)]
        cmd += ["--log-bytes", str(log_bytes), "--config-out", str(self.config_path)]
        cmd += ["--data-dir", str(workdir / f"{name}-agent-data")]
        if ssh_port is not None:
            cmd += ["--ssh-port", str(ssh_port)]
        self._out = self.log_path.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=bench_env())
        self.control_url = ""

    def wait_ready(self) -> SimProcess:
        """Wait until the fleet listens and its config is written.

        Raises:
            RuntimeError: the simulator exited or did not come up in time.
        """
        deadline_s = 60.0 + 0.1 * self.devices

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hezo-sim exited: {self.log_path.read_text(encoding='utf-8')[-2000:]}")
            return "run the agent against it" in self.log_path.read_text(encoding="utf-8")

        wait_for(ready, deadline_s, "hezo-sim run", every_s=0.1)
        found = re.search(r"control API (http://\S+)", self.log_path.read_text(encoding="utf-8"))
        self.control_url = found.group(1) if found else ""
        return self

    def config(self) -> dict[str, Any]:
        """Return the agent config the simulator wrote (a mapping)."""
        data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        assert isinstance(data, dict)
        return data

    def write_config(self, path: Path, data_dir: Path, drop: list[str] | None = None, **agent: Any) -> Path:
        """Write a copy of the simulator's agent config with ``agent`` settings changed, ``drop`` left out."""
        data = self.config()
        data["devices"] = [d for d in data["devices"] if d["id"] not in set(drop or ())]
        data.setdefault("agent", {}).update(agent)
        data["agent"]["data_dir"] = str(data_dir)
        data["agent"].setdefault("language", "en")
        data["api"] = {
            "enabled": False
        }  # several agents run at once in bench-quick; polling is what is measured
        secret = self.config_path.with_suffix(".secret")
        for dev in data["devices"]:
            creds = dev.get("credentials") or {}
            if "password_file" in creds:
                creds["password_file"] = str(secret)
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        return path

    def targets(self) -> list[tuple[str, str, int, str]]:
        """Return (id, host, port, status path) of every device, for a peer prober."""
        rows = []
        for dev in self.config()["devices"]:
            profile = load_profile(profile_name(dev["model"], dev.get("profile")))
            path = next(e.path for n, e in profile.endpoints.items() if n != "logs")
            rows.append((dev["id"], dev["host"], int(dev.get("port") or profile.http.port), path))
        return rows

    def ssh_endpoints(self) -> list[tuple[str, int]]:
        """Return (host, SSH port) of every device, from the table ``hezo-sim run`` printed.

        Raises:
            ValueError: the fleet serves no SSH.
        """
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        head = next(
            (i for i, line in enumerate(lines) if line.split()[:4] == ["ID", "MODEL", "ADDRESS", "SSH"]), None
        )
        if head is None:
            raise ValueError("this fleet serves no SSH")
        rows = []
        for line in lines[head + 1 :]:
            cols = line.split()
            if len(cols) < 4 or not cols[3].isdigit():
                break
            rows.append((cols[2].rsplit(":", 1)[0], int(cols[3])))
        return rows

    def fault(self, device_id: str, kind: str, arg: str | None = None) -> None:
        """Inject a fault through the control API."""
        body = json.dumps({"kind": kind, "arg": arg}).encode()
        req = urllib.request.Request(
            f"{self.control_url}/devices/{device_id}/fault",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def clear(self) -> None:
        """Clear every fault."""
        req = urllib.request.Request(f"{self.control_url}/clear", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def stop(self) -> None:
        """Stop the simulator (SIGTERM: it closes every device cleanly)."""
        stop_process(self.proc, 30.0)
        self._out.close()


def started(sims: list[SimProcess]) -> list[SimProcess]:
    """Wait for several simulators started in parallel."""
    t0 = time.monotonic()
    for sim in sims:
        sim.wait_ready()
    print(f"simulators ready in {time.monotonic() - t0:.1f} s", flush=True)
    return sims
