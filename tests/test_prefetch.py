"""The helper-thread prefetcher keeps the loader's order, stops cleanly and re-raises errors."""

import threading

import pytest

from medseg.engine.prefetch import ThreadPrefetcher


def test_order_and_length_preserved():
    items = list(range(50))
    pre = ThreadPrefetcher(items, depth=3)
    assert list(pre) == items
    assert len(pre) == 50
    assert list(pre) == items  # a second epoch iterates again


def test_error_in_loader_reaches_consumer():
    def broken():
        yield 1
        raise ValueError("bad patch in case_007")

    got = []
    with pytest.raises(ValueError, match="case_007"):
        for x in ThreadPrefetcher(broken()):
            got.append(x)
    assert got == [1]


def test_breaking_early_stops_the_thread():
    before = threading.active_count()
    for x in ThreadPrefetcher(range(10_000), depth=2):
        if x == 3:
            break
    assert threading.active_count() == before


def test_background_writer_snapshots_and_reraises(tmp_path):
    import torch

    from medseg.engine.state import BackgroundWriter, latest_state, save_state, snapshot

    live = {"w": torch.zeros(3), "nested": {"m": [torch.ones(2)]}, "step": 1}
    frozen = snapshot(live)
    live["w"] += 5  # training goes on while the snapshot is written
    live["nested"]["m"][0] *= 3
    writer = BackgroundWriter()
    writer.submit(lambda: save_state(tmp_path, 0, frozen))
    writer.wait()
    state, path = latest_state(tmp_path)
    assert path.name == "state-00000.pt" and state["step"] == 1
    assert torch.equal(state["w"], torch.zeros(3)) and torch.equal(state["nested"]["m"][0], torch.ones(2))

    def fail():
        raise OSError("disk full")

    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.wait()  # the error is reported once
