"""Every benchmark script runs at smoke size, prints its table, records it, and its invariants hold.

The benchmarks themselves (``make bench``, ``make bench-quick``) are too long for the test suite;
these smoke runs keep the scripts from rotting: each runs end to end on loopback with a tiny
fleet (all seven at once, so the whole file takes about as long as the slowest), writes its
table to a temporary results file (never ``docs/benchmarks.md``), and the
figures that are correctness checks rather than performance targets (nothing lost, nothing
twice, no file outside the data folder, no credential after an identity change) must hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

#: per script: figures (by the start of their name) that must be "met" even at smoke size
MUST_HOLD = {
    "scale": [],
    "detection": ["model: outages without exactly their ticket"],
    "false_alarms": [
        "1–2-poll failures",
        "≥ k-failure episodes",
        "helpdesk tickets per episode device",
        "flapping every 2 min",
        "site network outage",
    ],
    "crash": ["uploads: lost / duplicated / torn", "enqueue: lost / duplicated / torn"],
    "outage": [
        "spool on disk, max / quota",
        "delivered / pending / rejected",
        "order: priority inversions",
        "duplicated tickets / comments",
        "attachments with a wrong hash",
    ],
    "hostile": [
        "log stream",
        "gzip bomb",
        "cert change",
        "hostkey change",
        "files outside the agent's data folder",
    ],
    "logpull": ["logs pulled over SSH / concurrency"],
}
#: performance figures: at smoke size on a busy machine they only have to be measured
MEASURED = {
    "scale": ["agent CPU, steady", "agent RSS max", "agent / blackbox CPU per poll", "blackbox probes"],
    "logpull": ["poll lateness during the pull", "pull time, all logs"],
}


@dataclass
class SmokeRun:
    """One benchmark script run at smoke size: its exit code, output, results file and figures."""

    code: int
    output: str
    results: Path
    figures: list[dict[str, object]]


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SmokeRun]:
    """Run every script at smoke size, all at once (they mostly wait on their fleets and timers)."""
    folder = tmp_path_factory.mktemp("bench-smoke")
    env = dict(os.environ, HEZO_BENCH_NOTE="smoke test")
    procs = {}
    for name in MUST_HOLD:
        out = (folder / f"{name}.out").open("w", encoding="utf-8")
        cmd = [
            sys.executable,
            str(BENCH / f"{name}.py"),
            "--size",
            "smoke",
            "--results",
            str(folder / f"{name}.md"),
            "--json",
            str(folder / f"{name}.json"),
        ]
        procs[name] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT), out)
    runs = {}
    deadline = time.monotonic() + 150
    for name, (proc, out) in procs.items():
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=10)
        out.close()
        figures = folder / f"{name}.json"
        data = json.loads(figures.read_text(encoding="utf-8")) if figures.exists() else {"figures": []}
        runs[name] = SmokeRun(
            code, (folder / f"{name}.out").read_text(encoding="utf-8"), folder / f"{name}.md", data["figures"]
        )
    return runs


@pytest.mark.parametrize("name", list(MUST_HOLD))
def test_benchmark_runs_at_smoke_size_prints_its_table_and_records_it(
    name: str, smoke_runs: dict[str, SmokeRun]
) -> None:
    run = smoke_runs[name]
    assert run.code == 0, run.output[-4000:]
    assert "| figure | measured | target | verdict |" in run.output
    text = run.results.read_text(encoding="utf-8")
    assert f"<!-- bench:{name} -->" in text and "smoke run, smoke test" in text
    assert text.count("| figure | measured | target | verdict |") == 2, (
        "the current block and one history entry"
    )
    assert run.figures
    for start in MUST_HOLD[name]:
        found = [f for f in run.figures if str(f["name"]).startswith(start)]
        assert found, f"no figure {start!r} in {[f['name'] for f in run.figures]}"
        assert all(f["ok"] is True for f in found), f"{name}: {found}"
    for start in MEASURED.get(name, []):
        found = [f for f in run.figures if str(f["name"]).startswith(start)]
        assert found and all("nan" not in str(f["value"]) and "n/a" not in str(f["value"]) for f in found), (
            f"{name}: {start!r} not measured"
        )


def test_a_second_run_replaces_the_current_block_and_appends_to_the_history(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from _common import Report, record, skeleton
    finally:
        sys.path.remove(str(BENCH))
    results = tmp_path / "benchmarks.md"
    for value in ("first", "second"):
        report = Report("outage", "smoke")
        report.add("drain", value, "≤ 1", value == "first")
        record(results, "outage", report.block("today", "a machine"))
    text = results.read_text(encoding="utf-8")
    current, history = text.split("## History", 1)
    assert "| drain | second | ≤ 1 | MISSED |" in current and "| drain | first |" not in current
    assert history.index("| drain | first | ≤ 1 | met |") < history.index("| drain | second | ≤ 1 | MISSED |")
    assert all(f"<!-- bench:{name} -->" in current for name in MUST_HOLD)
    assert skeleton().count("not run yet") == len(MUST_HOLD)
