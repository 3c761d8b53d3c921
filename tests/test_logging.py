"""Training logs that suit a file: on a non-terminal stream, periodic one-line records (iteration,
loss, it/s, ETA) instead of a redrawn progress bar; on a terminal, the bar."""

from __future__ import annotations

import io
import logging
import re
from dataclasses import replace

import pytest

from medseg.config import TrainConfig
from medseg.engine.logging import ProgressLines, TrainingLog, _scalars, format_eta

CFG = TrainConfig(tensorboard=False, mlflow=False, progress=True)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured():
    """Records of ``medseg.engine.logging`` written to a non-terminal stream, as a file handler would."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("medseg.engine.logging")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def _epoch_record(epoch: int, iteration: int) -> dict:
    return {"epoch": epoch, "iteration": iteration, "loss": 0.5, "lr": 1e-3, "data_wait_fraction": 0.1,
            "train_s": 1.0, "elapsed_s": 1.0, "val_dice": {"tumour": 0.7}, "val_mean_dice": 0.7}


def test_non_terminal_stream_gets_periodic_lines_without_carriage_returns(tmp_path, captured):
    stream = io.StringIO()  # not a terminal: no bar may be drawn on it
    logger = TrainingLog(tmp_path, CFG, total=20, epoch=0, iteration=0, stream=stream, every_s=0.0)
    assert logger.bar is None and logger.lines is not None
    losses = []
    for i in range(10):
        losses.append(1.0 / (i + 1))
        logger.step(0, losses, float("-inf"))
    logger.epoch(_epoch_record(0, 10))
    logger.close()
    assert stream.getvalue() == ""
    text = captured.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 11  # one per step (every_s=0) and one at the epoch end
    for line in lines:
        assert re.search(r"iteration \d+/20", line), line
        assert re.search(r"loss \d+\.\d+", line), line
        assert re.search(r"\d+\.\d+ it/s", line), line
        assert re.search(r"ETA (\d+:\d\d:\d\d|\?)", line), line
    assert "iteration 10/20" in lines[-1] and "val mean Dice 0.7000" in lines[-1]


def test_progress_lines_are_spaced_by_the_interval(captured):
    now = [0.0]
    lines = ProgressLines(total=100, done=40, every_s=30.0, clock=lambda: now[0])
    for _ in range(60):
        now[0] += 1.0  # one iteration per second
        lines.step(3, [0.25])
    text = captured.getvalue().splitlines()
    assert len(text) == 2  # at 30 s and 60 s
    assert "epoch 3, iteration 70/100, 1.00 it/s, ETA 0:00:30, loss 0.2500" in text[0]
    assert "iteration 100/100" in text[1] and "ETA 0:00:00" in text[1]


def test_terminal_gets_the_bar_and_progress_false_gets_neither(tmp_path, captured):
    bar = TrainingLog(tmp_path, CFG, total=5, epoch=0, iteration=0, stream=_Terminal())
    assert bar.bar is not None and bar.lines is None
    bar.step(0, [1.0], 0.5)
    bar.close()
    quiet = TrainingLog(tmp_path, replace(CFG, progress=False), total=5, epoch=0, iteration=0, stream=io.StringIO(),
                        every_s=0.0)
    assert quiet.bar is None and quiet.lines is None
    quiet.step(0, [1.0], 0.5)
    assert captured.getvalue() == ""


def test_format_eta():
    assert format_eta(0) == "0:00:00" and format_eta(59.6) == "0:01:00" and format_eta(float("nan")) == "?"


def test_the_moving_average_that_chooses_best_pt_is_logged(tmp_path, captured):
    record = {**_epoch_record(0, 10), "val_mean_dice_ema": 0.65}
    assert _scalars(record)["val/mean_dice_ema"] == 0.65
    assert "val/mean_dice_ema" not in _scalars(_epoch_record(0, 10))
    logger = TrainingLog(tmp_path, CFG, total=20, epoch=0, iteration=0, stream=io.StringIO(), every_s=0.0)
    logger.epoch(record)
    logger.close()
    assert "val mean Dice 0.7000 (tumour 0.700), moving average 0.6500" in captured.getvalue()
