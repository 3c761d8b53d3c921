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
