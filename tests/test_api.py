"""The Python API (harness/api.py): the README's example runs as written, and each function returns
what the command line would show."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import harness
from harness.errors import HarnessError
from harness.testing import offline_environ

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- api-example: tests/test_api.py runs this block -->"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    assert MARKER in text, "the README lost its API example marker"
    block = re.match(r"\s*```python\n(.*?)\n```", text.split(MARKER, 1)[1], re.S)
    assert block, "the API example marker must precede a ```python block"
    return block.group(1)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for key, value in offline_environ(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_api_example_runs(offline):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md (Python API)", "exec"), {"__name__": "readme_api_example"})
    printed = out.getvalue()
    assert "focal" in printed and "top1_mean" in printed and "test_top1_per_epoch" in printed
    assert (offline / "api-results" / "harness.duckdb").is_file()


def test_the_api_returns_the_stored_numbers(offline):
    board = harness.run("long_tail", method="ce,focal", seed=[0, 1], epochs=1, results="r")
    assert sorted(board["method"]) == ["ce", "focal"] and set(board["n"]) == {2}
    runs = harness.runs(results="r")
    assert len(runs) == 4 and {"top1", "ece"} <= set(runs.columns)
    focal = runs[runs.entry == "focal"]
    assert board.loc[board.method == "focal", "top1_mean"].iloc[0] == pytest.approx(focal.top1.mean())
    curve = harness.curves(runs.run_id[0][:6], results="r")  # a prefix is enough
    epochs = curve[curve.name == "test_top1_per_epoch"]
    assert list(epochs.step) == [1]
    preds = harness.sample_predictions(runs.run_id[0], results="r")
    assert len(preds) == 1000 and len(preds.probs[0]) == 10
    assert (preds.pred == preds.label).mean() == pytest.approx(runs.top1[0], abs=1e-6)
    again = harness.run("long_tail", method="ce,focal", seed=[0, 1], epochs=1, results="r")  # stored: nothing trains
    assert again.equals(board)
    with pytest.raises(HarnessError, match="unknown method 'focla'"):
        harness.run("long_tail", method="focla", results="r")
