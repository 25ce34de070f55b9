"""`python -m research.eval.detection` on the fixtures: the printed table and the errors."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from research.eval.detection import SUMMARY_NAMES, coco_evaluate, main
from research.eval.detection_data import load_json

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GT, DETS = str(FIXTURES / "detection_gt.json"), str(FIXTURES / "detection_dets.json")
REPO = pathlib.Path(__file__).resolve().parents[2]


def test_coco_table(capsys):
    assert main(["--gt", GT, "--dets", DETS]) == 0
    out = capsys.readouterr().out
    expected = coco_evaluate(load_json(GT, "gt"), load_json(DETS, "dets"))
    for name in SUMMARY_NAMES:
        value = re.search(rf"\] = (-?\d\.\d{{3}})   {name}$", out, re.MULTILINE)
        assert value and float(value.group(1)) == pytest.approx(expected[name], abs=5e-4), name
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out
    assert re.search(r"^\s+3  cat\s+n/a$", out, re.MULTILINE)  # no ground truth
    assert re.search(r"^\s+4  bird\s+0\.00$", out, re.MULTILINE)  # no detections


def test_voc_tables(capsys):
    args = ["--gt", GT, "--dets", DETS, "--iou-threshold", "0.3", "--pixel-offset", "1"]
    assert main(args + ["--metric", "voc07"]) == 0
    out07 = capsys.readouterr().out
    assert main(args + ["--metric", "voc12"]) == 0
    out12 = capsys.readouterr().out
    assert "VOC07 11-point" in out07 and re.search(r"^\s+1  person\s+26\.84$", out07, re.MULTILINE)
    assert "VOC all-point" in out12 and re.search(r"^\s+1  person\s+24\.57$", out12, re.MULTILINE)
    assert re.search(r"^\s+2  dog\s+54\.55$", out07, re.MULTILINE) and re.search(r"^\s+2  dog\s+50\.00$", out12, re.MULTILINE)
    # mAP over person, dog and bird (cat has no objects).
    assert "mAP = 27.13" in out07 and "mAP = 24.86" in out12


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dets", str(FIXTURES / "detection_malformed.json")],
         r"error: detections file .*detection_malformed\.json' is not valid JSON: Expecting ',' delimiter at line 3"),
        (["--dets", str(FIXTURES / "missing.json")], r"error: .*No such file"),
        (["--dets", GT], r"error: detections must be a list, got dict"),
    ],
)
def test_errors_exit_2_with_a_message(args, message, capsys):
    assert main(["--gt", GT] + args) == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err) and captured.out == ""


def test_module_entry_point():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "research.eval.detection", "--gt", GT, "--dets", DETS, "--metric", "voc12"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mAP = " in proc.stdout
