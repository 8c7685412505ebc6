"""``hezo-agent init``: a starter config that loads, from flags, placeholders or answered questions."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.cli_install import run_init
from agent.init import EXAMPLE_HOST, InitValues, complete_values, parse_device_spec
from config.loader import load_config

FLAGS = [
    "--site", "warszawa-hq", "--address", "ul. Prosta 1, 00-001 Warszawa", "--contact-name", "Anna Kowalska",
    "--contact-phone", "+48 22 555 01 23", "--contact-email", "it@example.pl",
]  # fmt: skip


class ScriptedAsker:
    """Answers questions from a list, in order; records the questions."""

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.questions: list[str] = []

    def ask(self, question: str, default: str | None = None, choices: Sequence[str] | None = None) -> str:
        self.questions.append(question)
        answer = self.answers.pop(0)
        return default if answer == "" and default is not None else answer

    def confirm(self, question: str, default: bool) -> bool:
        raise AssertionError("not used")


class NeverAsk(ScriptedAsker):
    def ask(self, question: str, default: str | None = None, choices: Sequence[str] | None = None) -> str:
        raise AssertionError(f"asked {question!r} although every value was given")


@pytest.fixture(autouse=True)
def _not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))


def test_flags_write_a_config_that_loads_with_passwords_only_as_variable_names(tmp_path: Path) -> None:
    out = tmp_path / "hezo.yaml"
    argv = ["init", "-o", str(out), *FLAGS, "--device", "a30-zarzad,A30,127.0.0.5,Sala Zarząd",
            "--device", "mvc-wisla,mvc,room-pc.example.local"]  # fmt: skip

    assert main(argv) == 0

    config = load_config(out)
    site = config.sites[0]
    assert (site.name, site.address, site.contact.email) == ("warszawa-hq", "ul. Prosta 1, 00-001 Warszawa",
                                                             "it@example.pl")  # fmt: skip
    assert [(d.id, d.model, d.host, d.room, d.site) for d in config.devices] == [
        ("a30-zarzad", "A30", "127.0.0.5", "Sala Zarząd", "warszawa-hq"),
        ("mvc-wisla", "MVC", "room-pc.example.local", "mvc-wisla", "warszawa-hq"),
    ]
    assert all(d.credentials and d.credentials.password_env == "HEZO_DEVICE_PASSWORD" for d in config.devices)
    text = out.read_text(encoding="utf-8")
    assert "password:" not in text and "password_file" not in text
    assert "never from this file" in text
    assert config.ticketing.backend == "local"


def test_without_a_terminal_nothing_is_asked_and_placeholders_are_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "starter.yaml"

    assert main(["init", "-o", str(out)]) == 0

    config = load_config(out)
    assert config.devices[0].host == EXAMPLE_HOST
    text = out.read_text(encoding="utf-8")
    assert text.count("# CHANGE ME") >= 4
    assert "replace the CHANGE ME values" in capsys.readouterr().err


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hezo.yaml"
    out.write_text("precious: true\n", encoding="utf-8")

    assert main(["init", "-o", str(out), *FLAGS]) == 1
    assert out.read_text(encoding="utf-8") == "precious: true\n"
    assert "--force" in capsys.readouterr().err

    assert main(["init", "-o", str(out), *FLAGS, "--force"]) == 0
    assert load_config(out).sites[0].name == "warszawa-hq"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--device", "a30,A40,127.0.0.5", "model must be one of A20, A30, MVC"),
        ("--device", "a30,A30", "ID,MODEL,HOST"),
        ("--device", "a30,A30,300.1.1.1", "not a valid host"),
        ("--contact-email", "nobody", "not an e-mail address"),
        ("--site", "bad site!", "letters, digits"),
    ],
)
def test_bad_flags_name_the_flag_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    out = tmp_path / "hezo.yaml"
    argv = ["init", "-o", str(out), *FLAGS, flag, value]

    assert main(argv) == 2

    err = capsys.readouterr().err
    assert flag in err and message in err
    assert not out.exists()


def test_in_a_terminal_the_missing_values_are_asked_and_bad_answers_asked_again(tmp_path: Path) -> None:
    out = tmp_path / "asked.yaml"
    args = _args(["init", "-o", str(out), "--site", "krakow-office"])
    asker = ScriptedAsker(
        [
            "Ryn",  # too short for an address: asked again
            "ul. Rynek Główny 1, 31-042 Kraków",
            "Piotr Nowak",
            "+48 12 555 04 56",
            "piotr(at)example.pl",  # asked again
            "piotr@example.pl",
            "a20-wawel", "A20", "127.0.0.7", "Sala Wawel",
            "a30-planty", "a30", "not a host!", "127.0.0.8", "",  # room: the default (the id)
            "",  # no more devices
        ]
    )  # fmt: skip

    assert run_init(args, interactive=True, asker=asker) == 0

    config = load_config(out)
    assert config.sites[0].address == "ul. Rynek Główny 1, 31-042 Kraków"
    assert [(d.id, d.model, d.host, d.room) for d in config.devices] == [
        ("a20-wawel", "A20", "127.0.0.7", "Sala Wawel"),
        ("a30-planty", "A30", "127.0.0.8", "a30-planty"),
    ]
    assert asker.answers == []
    assert not any("Site name" in q for q in asker.questions)


def test_in_a_terminal_nothing_is_asked_when_every_flag_is_given(tmp_path: Path) -> None:
    out = tmp_path / "flags.yaml"
    args = _args(["init", "-o", str(out), *FLAGS, "--device", "a30-1,A30,127.0.0.9"])

    assert run_init(args, interactive=True, asker=NeverAsk([])) == 0
    assert load_config(out).devices[0].id == "a30-1"


def test_values_are_quoted_so_yaml_keeps_them_as_text(tmp_path: Path) -> None:
    values = complete_values(
        InitValues("hq", "ul. Nowa 1: #2, Łódź", "O'Brien \"Jr\"", "0048 123", "a@b.pl",
                   devices=(parse_device_spec("a20-1,A20,127.0.0.3,Sala: 1 # A"),)),
        None,
    )  # fmt: skip
    from agent.init import render_config

    data = yaml.safe_load(render_config(values))
    assert data["sites"][0]["address"] == "ul. Nowa 1: #2, Łódź"
    assert data["sites"][0]["contact"] == {"name": 'O\'Brien "Jr"', "phone": "0048 123", "email": "a@b.pl"}
    assert data["devices"][0]["room"] == "Sala: 1 # A"


def _args(argv: list[str]) -> object:
    from agent.cli import build_parser

    return build_parser().parse_args(argv)
