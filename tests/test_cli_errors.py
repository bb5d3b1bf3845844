"""No traceback reaches a user from any command: one message with the fix, a documented code.

Each case runs the real program (`dtlr ...` or a former `dtlr-*` alias) on bad input and
checks the exit code, a key word of the message, and that no traceback is printed. The last
tests check the handler itself on an error it has never seen (a bug): exit 70, a message that
asks to report it, the traceback only with --debug.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import click
import pytest

from dtlr.shared.cli import EXIT_BUG, run_command
from tests.cluster import BIN, free_port


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("seed: [1, 2\n", encoding="utf-8")
    typo = root / "typo.yaml"
    typo.write_text("modeler:\n  icc_treshold: 0.8\n", encoding="utf-8")
    csv = root / "preds.csv"
    csv.write_text("y,p\n1,0.9\n0,0.2\n", encoding="utf-8")
    not_a_file = root / "a-file"
    not_a_file.write_text("x", encoding="utf-8")
    return {"root": root, "bad_yaml": bad_yaml, "typo": typo, "csv": csv, "file": not_a_file}


CASES = [
    (["dtlr", "submit", "--cohort", "nope", "--store", "{root}/s1", "--weights", "random"], 2,
     "not registered"),
    (["dtlr", "submit", "--cohort", "demo", "--config", "{bad_yaml}"], 2, "not valid YAML"),
    (["dtlr", "submit", "--cohort", "demo", "--config", "{typo}"], 2, "icc_treshold"),
    (["dtlr", "submit", "--cohort", "x", "--jobs", "0"], 2, "--jobs"),
    (["dtlr-submit", "--cohort", "demo", "--broker", "redis://127.0.0.1:{port}/0"], 3,
     "cannot reach the broker"),
    (["dtlr", "model", "--train", "nope", "--store", "{root}/s2"], 2, "not registered"),
    (["dtlr", "predict", "--model", "nope", "--cohort", "x", "--store", "{root}/s3"], 2,
     "no fitted model"),
    (["dtlr", "stats", "roc", "--csv", "{root}/missing.csv", "--label", "y", "--positive", "1",
      "--score", "p"], 2, "missing.csv"),
    (["dtlr", "stats", "roc", "--csv", "{csv}", "--label", "nope", "--positive", "1",
      "--score", "p"], 2, "nope"),
    (["dtlr-stats", "hl", "--csv", "{csv}", "--label", "y", "--positive", "1", "--prob",
      "p"], 2, ""),
    (["dtlr", "extract", "--image", "{csv}", "--mask", "{csv}", "--no-n4"], 2, "preds.csv"),
    (["dtlr", "cohort", "add", "x", "{root}/missing.csv", "--store", "{root}/s4"], 2,
     "missing.csv"),
    (["dtlr", "cohort", "show", "nope", "--store", "{root}/s5"], 2, "not registered"),
    (["dtlr", "status", "--cohort", "nope", "--store", "{root}/s6"], 2, "not registered"),
    (["dtlr", "sql", "SELEC 1", "--store", "{root}/s7"], 2, "catalog"),
    (["dtlr", "demo-data", "{file}/demo"], 2, "a-file"),
    (["dtlr", "worker", "--queue", "cpu"], 2, "no broker"),
    (["dtlr", "nonsense"], 2, "No such command"),
]


@pytest.mark.parametrize("argv,code,words", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_bad_input_gives_a_message_and_an_exit_code(files: dict[str, Path], argv: list[str],
                                                    code: int, words: str) -> None:
    args = [a.format(port=free_port(), **files) for a in argv]
    env = {k: v for k, v in os.environ.items() if k not in ("DTLR_BROKER_URL", "DTLR_DEBUG")}
    out = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                         timeout=120, env=env, cwd=files["root"], encoding="utf-8")
    text = out.stdout + out.stderr
    assert out.returncode == code, text
    assert "Traceback" not in text
    assert words in text


@click.command()
def crashing() -> None:
    """A command whose code has a bug no handler knows."""
    raise ZeroDivisionError("division by zero in the test")


def test_an_unknown_error_is_a_bug_report(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DTLR_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_command(crashing, "dtlr-test", [])
    assert exit_info.value.code == EXIT_BUG
    err = capsys.readouterr().err
    assert "unexpected ZeroDivisionError: division by zero in the test" in err
    assert "please report it" in err and "--debug" in err and "Traceback" not in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTLR_DEBUG", "1")
    with pytest.raises(SystemExit) as exit_info:
        run_command(crashing, "dtlr-test", [])
    assert exit_info.value.code == EXIT_BUG
    assert "Traceback" in capsys.readouterr().err


def test_an_ascii_locale_gets_the_message_not_an_encoding_error(tmp_path: Path) -> None:
    """A server with LANG=C (and Python's UTF-8 mode off) cannot print 'ë' or table borders:
    the message still arrives, with such characters replaced."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,image,mask\nZo\u00eb,img/zoe.nii.gz,img/zoe_mask.nii.gz\n",
                        encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    out = subprocess.run([str(BIN / "dtlr"), "cohort", "add", "h", str(manifest), "--store",
                          str(tmp_path / "s")], capture_output=True, timeout=120, env=env)
    text = (out.stdout + out.stderr).decode("ascii")  # nothing but ASCII came out
    assert out.returncode == 2, text
    assert "Traceback" not in text and "UnicodeEncodeError" not in text
    assert "line 2, column 'patient_id': 'Zo?' is not a usable ID" in text
