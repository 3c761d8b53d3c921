"""Background-thread batch prefetching.

With ``train.num_workers=0`` the next batches are assembled in a helper thread while the network
computes on the current one: patch extraction and augmentation are numpy / torch kernels that
release the GIL, so on machines with few cores a thread overlaps them with the training step at
no inter-process cost (worker processes copy every patch through shared memory and compete for the
same cores). The order of batches is exactly the loader's, so determinism is unaffected.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

_DONE = object()


class ThreadPrefetcher:
    """Iterate ``loader`` with up to ``depth`` batches prepared ahead in one daemon thread."""

    def __init__(self, loader: Iterable[Any], depth: int = 2) -> None:
        self.loader = loader
        self.depth = max(1, int(depth))

    def __iter__(self) -> Iterator[Any]:
        q: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def work() -> None:
            try:
                for item in self.loader:
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(_DONE)
            except BaseException as e:  # re-raised in the consumer  # noqa: BLE001
                q.put(e)

        thread = threading.Thread(target=work, name="medseg-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]
