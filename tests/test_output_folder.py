"""Output folders that appear whole or not at all; a full or read-only place is one line, found
before the work; compare --json on such a place; plain progress lines off a terminal."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.disk import modes_enforced, refuse_writes, tree

from gliograde.files.atomic import write_text
from gliograde.compare import main as compare_main
from gliograde.evaluation import progress as progress_module
from gliograde.evaluation.progress import LineProgress, progress
from gliograde.files.output_folder import OutputError, check_folder_target, staged_folder

NO_MODES = "root ignores a folder's modes here; the monkeypatched variant runs instead"


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_staged_folder_appears_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with staged_folder(target, own=("*.json",)) as staging:
        write_text(staging / "metrics.json", "{}")
        assert not target.exists() and staging.parent == tmp_path and staging.name.startswith(".out.partial-")
    assert os.listdir(target) == ["metrics.json"] and _hidden(tmp_path) == []
    # a second run replaces the whole folder: nothing of the first is left
    with staged_folder(target, own=("*.json",)) as staging:
        write_text(staging / "other.json", "{}")
        assert (target / "metrics.json").is_file()  # the old folder stays whole meanwhile
    assert os.listdir(target) == ["other.json"] and _hidden(tmp_path) == []


def test_a_failure_removes_the_staged_folder_and_the_folders_made_for_it(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError, match="bug"):
        with staged_folder(target) as staging:
            write_text(staging / "half.png", "x")
            raise RuntimeError("bug")  # not a disk problem: it keeps its traceback
    assert os.listdir(tmp_path) == []


def test_a_full_disk_while_writing_is_one_line_and_keeps_the_earlier_folder(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "metrics.json").write_text("earlier")
    with pytest.raises(OutputError) as err:
        with staged_folder(target, own=("*.json",)) as staging:
            write_text(staging / "a.json", "{}")
            refuse_writes(monkeypatch, tmp_path, errno.ENOSPC)  # the disk fills up during the work
            write_text(staging / "b.json", "{}")
    message = str(err.value)
    assert "\n" not in message and f"output_dir={target}" in message and "No space left on device" in message
    monkeypatch.undo()
    assert os.listdir(target) == ["metrics.json"] and (target / "metrics.json").read_text() == "earlier"
    assert _hidden(tmp_path) == []


def test_a_read_only_place_is_refused_before_the_work(tmp_path, monkeypatch):
    target = tmp_path / "ro" / "out"
    target.parent.mkdir()
    before = tree(tmp_path)
    refused = refuse_writes(monkeypatch, target.parent)
    with pytest.raises(OutputError, match=r"output_dir=.*ro/out: cannot write in .*ro \(Read-only file"):
        check_folder_target(target)
    ran = False
    with pytest.raises(OutputError, match=r"output_dir=.*ro/out: cannot write there \(Read-only file"):
        with staged_folder(target):
            ran = True
    assert not ran and refused and tree(tmp_path) == before


def test_a_folder_without_write_permission_is_refused_before_the_work(tmp_path):
    if not modes_enforced(tmp_path):
        pytest.skip(NO_MODES)
    place = tmp_path / "ro"
    place.mkdir()
    place.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            check_folder_target(place / "out")
        with pytest.raises(OutputError, match="Permission denied"):
            with staged_folder(place / "out"):
                pass
        assert os.listdir(place) == []
    finally:
        place.chmod(0o755)


def test_a_folder_holding_other_files_is_never_replaced(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    (target / "metrics.json").write_text("{}")
    (target / "notes.txt").write_text("mine")
    (target / ".roc.tmp-123.png").write_text("killed half-way")  # not a reason to refuse
    with pytest.raises(OutputError, match=r"holds notes.txt, which this command does not write"):
        check_folder_target(target, own=("*.json",))
    with pytest.raises(OutputError, match=r"holds notes.txt, which this command does not write"):
        with staged_folder(target, own=("*.json",)):
            pytest.fail("a foreign folder was staged for replacement")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        check_folder_target(tmp_path / "file")
    assert sorted(os.listdir(target)) == [".roc.tmp-123.png", "metrics.json", "notes.txt"]
    assert _hidden(tmp_path) == []
    (target / "notes.txt").unlink()
    with staged_folder(target, own=("*.json",)) as staging:
        write_text(staging / "metrics.json", "{}")
    assert os.listdir(target) == ["metrics.json"]


def test_partial_folders_of_killed_processes_are_removed_not_those_of_live_ones(tmp_path):
    command = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead = subprocess.run(command, capture_output=True, text=True)
    host = socket.gethostname()
    abandoned = tmp_path / f".out.partial-{host}-{int(dead.stdout)}-abcd"
    running = tmp_path / f".out.partial-{host}-{os.getpid()}-abcd"
    for folder in (abandoned, running):
        folder.mkdir()
        (folder / "half.png").write_text("x")
    with staged_folder(tmp_path / "out"):
        pass
    assert not abandoned.exists() and running.is_dir()


def test_a_full_disk_elsewhere_names_that_file_and_other_errors_keep_their_traceback(tmp_path, monkeypatch):
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    refuse_writes(monkeypatch, elsewhere)
    with pytest.raises(OutputError, match=r"run/calibration.json: Read-only file system; output_dir=.* not"):
        with staged_folder(tmp_path / "out"):
            open(elsewhere / "calibration.json", "w")
    with pytest.raises(FileNotFoundError):
        with staged_folder(tmp_path / "out"):
            open(tmp_path / "missing" / "x.json")
    assert os.listdir(tmp_path) == ["run"]


# ------------------------------------------------------------------ compare --json
def _runs(tmp_path: Path) -> list[str]:
    folders = []
    for name, probs in (("a", [0.9, 0.8, 0.3, 0.2]), ("b", [0.6, 0.7, 0.4, 0.1])):
        folder = tmp_path / name
        folder.mkdir()
        rows = [f"P{i},{'HGG' if i < 2 else 'LGG'},{1 - p},{p}" for i, p in enumerate(probs)]
        header = "patient_id,label,prob_LGG,prob_HGG\n"
        (folder / "predictions_test.csv").write_text(header + "\n".join(rows) + "\n")
        folders.append(str(folder))
    return folders


def _compare(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        compare_main(list(argv))
    return stop.value.code, capsys.readouterr().err


def test_compare_json_on_a_read_only_folder_is_one_line_before_comparing(tmp_path, monkeypatch, capsys):
    runs = _runs(tmp_path)
    out = tmp_path / "ro"
    out.mkdir()
    refuse_writes(monkeypatch, out)
    monkeypatch.setattr("gliograde.compare.compare", lambda *a, **k: pytest.fail("compared before the check"))
    code, err = _compare(capsys, *runs, "--json", str(out / "c.json"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"--json={out / 'c.json'}" in err and "cannot be written" in err
    code, err = _compare(capsys, *runs, "--json", str(tmp_path / "nowhere" / "c.json"))
    assert code == 2 and "no such folder" in err
    assert os.listdir(out) == []


def test_compare_json_in_a_folder_without_write_permission_is_one_line(tmp_path, capsys):
    if not modes_enforced(tmp_path):
        pytest.skip(NO_MODES)
    runs = _runs(tmp_path)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, err = _compare(capsys, *runs, "--json", str(out / "c.json"))
    finally:
        out.chmod(0o755)
    assert code == 2 and err.count("\n") == 1 and os.listdir(out) == []


def test_compare_json_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    runs = _runs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    real = write_text

    def fill_then_write(path, text):
        refuse_writes(monkeypatch, out, errno.ENOSPC)  # full after the check, when the result is written
        real(path, text)

    monkeypatch.setattr("gliograde.compare.write_text", fill_then_write)
    code, err = _compare(capsys, *runs, "--json", str(out / "c.json"))
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err
    assert f"--json={out / 'c.json'}: cannot be written" in err
    monkeypatch.undo()
    assert os.listdir(out) == []
    compare_main([*runs, "--json", str(out / "c.json")])  # with space, it writes
    assert json.loads((out / "c.json").read_text())["n_patients"] == 4


# ------------------------------------------------------------------------ progress
def test_off_a_terminal_progress_is_a_plain_line_every_few_seconds():
    now = [0.0]
    log = io.StringIO()
    bar = LineProgress(None, "inference (test)", 400, "slices", log, every=5, clock=lambda: now[0])
    for _ in range(12):  # 35 slices a second
        now[0] += 1
        bar.update(min(35, 400 - bar.n))
    bar.close()
    assert log.getvalue().splitlines() == [
        "evaluate: inference (test) 175/400 slices",
        "evaluate: inference (test) 350/400 slices",
        "evaluate: inference (test) 400/400 slices",  # the step's end
    ]
    quick = io.StringIO()
    assert list(LineProgress(range(3), "Grad-CAM", None, "", quick, every=5)) == [0, 1, 2]
    assert quick.getvalue() == ""  # done before the first line was due: nothing to say


def test_progress_prints_plain_lines_to_a_log_and_nothing_when_disabled(monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    log, silent = io.StringIO(), io.StringIO()
    assert list(progress(range(2), desc="Grad-CAM", enabled=True, stream=log)) == [0, 1]
    assert list(progress(range(2), desc="Grad-CAM", enabled=False, stream=silent)) == [0, 1]
    assert log.getvalue().splitlines()[:2] == ["evaluate: Grad-CAM 1/2", "evaluate: Grad-CAM 2/2"]
    assert "\r" not in log.getvalue() and silent.getvalue() == ""
