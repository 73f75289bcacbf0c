"""evaluate.py's report folders, progress bars, atomic figures and prediction tables."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from helpers.commands import REPO, run_python
from helpers.runs import tiny_run
from omegaconf import OmegaConf

from gliograde.evaluation import predictions_table
from gliograde.evaluation.errors import EvaluationError
from gliograde.evaluation.figures import save_png
from gliograde.evaluation.predict import Predictions
from gliograde.evaluation.progress import progress, shown
from gliograde.evaluation.report import report_dir
from gliograde.evaluation.tables import write_predictions


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _options(**given) -> OmegaConf:
    base = {
        "split": "test",
        "ckpt": "best",
        "threshold": 0.5,
        "aggregate": "mean",
        "tta": "none",
        "calibration": "none",
        "output_dir": None,
    }
    return OmegaConf.create({**base, **given})


def test_report_folder_is_named_by_the_options_that_change_it(tmp_path):
    run = tmp_path / "run"
    assert report_dir(_options(), run, []) == run / "eval" / "test"
    assert report_dir(_options(split="val"), run, []) == run / "eval" / "val"
    youden_vote = _options(threshold="youden", aggregate="vote")
    assert report_dir(youden_vote, run, []) == run / "eval" / "test_youden_vote"
    assert report_dir(_options(threshold=0.3), run, []) == run / "eval" / "test_t0.3"
    assert report_dir(_options(ckpt="last", aggregate="tumor_weighted"), run, []) == (
        run / "eval" / "test_ckpt-last_tumor_weighted"
    )
    calibrated = _options(threshold="youden", tta="flip_rot", calibration="temperature")
    assert report_dir(calibrated, run, []) == run / "eval" / "test_youden_flip_rot_temperature"
    one = report_dir(_options(split="all"), run, ["data.root=/a"])
    other = report_dir(_options(split="all"), run, ["data.root=/b"])
    assert one.name.startswith("all_data-") and one != other
    mine = _options(output_dir=str(tmp_path / "mine"), threshold="youden")
    assert report_dir(mine, run, []) == tmp_path / "mine"


def test_progress_is_drawn_only_on_a_terminal_and_when_asked():
    terminal, log = _Terminal(), io.StringIO()
    assert shown(True, terminal) and not shown(False, terminal) and not shown(True, log)
    for stream, enabled in ((terminal, True), (terminal, False), (log, True)):
        assert list(progress(range(3), desc="inference", enabled=enabled, stream=stream)) == [0, 1, 2]
    assert "inference" in terminal.getvalue() and log.getvalue() == ""


def test_a_failed_figure_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "roc.png"
    figure = plt.figure()
    save_png(figure, path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG") and os.listdir(tmp_path) == ["roc.png"]

    def broken(target, **kwargs):
        Path(target).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(figure, "savefig", broken)
    with pytest.raises(OSError):
        save_png(figure, path)
    plt.close(figure)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["roc.png"]


def _predictions() -> Predictions:
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9], [0.3, 0.7], [0.5, 0.5]])
    return Predictions(
        patient_ids=["P1", "P1", "P2", "P2", "P3"],
        slice_index=np.array([3, 4, 3, 5, 7]),
        labels=np.array([0, 0, 1, 1, -1]),
        probs=probs,
        rows=np.arange(5),
        patients=["P1", "P2", "P3"],
        patient_probs=np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]),
        patient_labels=np.array([0, 1, -1]),
        slices_per_patient=np.array([2, 2, 1]),
        slice_patient=np.array([0, 0, 1, 1, 2]),
    )


def test_predictions_table_joins_the_runs_splits(tmp_path):
    run = tmp_path / "run"
    out = run / "eval" / "test"
    out.mkdir(parents=True)
    with pytest.raises(EvaluationError, match="patient_predictions.csv"):
        predictions_table(run, "test")
    write_predictions(out, _predictions(), "axial", ["LGG", "HGG"], threshold=0.5)
    assert sorted(os.listdir(out)) == ["patient_predictions.csv", "slice_predictions.csv"]
    assert (out / "slice_predictions.csv").read_text().splitlines()[:2] == [
        "patient_id,plane,slice_index,label,prob_LGG,prob_HGG",
        "P1,axial,3,LGG,0.8,0.2",
    ]
    with pytest.raises(EvaluationError, match="splits.csv"):
        predictions_table(run, "test")
    (run / "splits.csv").write_text("patient_id,label,split\nP1,LGG,test\nP2,HGG,test\nP9,HGG,train\n")
    table = predictions_table(run, "test")
    assert list(table["patient_id"]) == ["P1", "P2", "P3"]
    assert list(table["split"]) == ["test", "test", ""]  # P3: a patient the run never saw
    assert list(table["label"]) == ["LGG", "HGG", ""]
    assert list(table["prediction"]) == ["LGG", "HGG", "HGG"]  # 0.5 meets the threshold
    assert table["probability"].tolist() == pytest.approx([0.3, 0.8, 0.5])


def _under_terminal(*args: str) -> tuple[subprocess.CompletedProcess, str]:
    """``python ARGS`` with stderr on a pseudo-terminal, as a person at a shell sees it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # rows, columns
    process = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=slave, text=True
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = process.communicate(timeout=600)
    reader.join()
    os.close(master)
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, "")
    return done, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow  # end to end: real commands
def test_other_options_keep_the_earlier_report_and_show_progress(tmp_path_factory):
    run = tiny_run(tmp_path_factory)["run"]
    quiet = run_python("evaluate.py", f"run_dir={run}", "bootstrap=20", "gradcam_n=1")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "\r" not in quiet.stderr and "it/s" not in quiet.stderr  # not a terminal: no bars
    assert all(line.startswith("evaluate: ") for line in quiet.stderr.splitlines() if "inference" in line)
    default = run / "eval" / "test"
    first = (default / "metrics.json").read_bytes()

    result, terminal = _under_terminal(
        "evaluate.py", f"run_dir={run}", "bootstrap=20", "gradcam_n=1", "threshold=youden", "aggregate=vote"
    )
    assert result.returncode == 0, terminal[-3000:]
    for step in ("inference (test)", "inference (val)", "intervals", "Grad-CAM"):
        assert step in terminal, step
    named = run / "eval" / "test_youden_vote"
    assert f"Outputs: {named}" in result.stdout
    assert (default / "metrics.json").read_bytes() == first
    for folder in (default, named):
        assert (folder / "report.html").is_file() and list(folder.glob("gradcam_*.png"))
        assert not list(folder.glob(".*tmp*"))
    table = predictions_table(run, "test", named)
    assert set(table["split"]) == {"test"} and len(table) == 4
