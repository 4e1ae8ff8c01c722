"""Progress lines for the long loops, and a thread-pool map that prints them."""
import concurrent.futures
import threading
import time

PRINT_EVERY_S = 5.0


class Progress:
    """Prints `label: done/total` at most every PRINT_EVERY_S seconds, and once at the end."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done = label, total, 0
        self._lock = threading.Lock()
        self._start = self._last = time.monotonic()

    def step(self) -> None:
        with self._lock:
            self.done += 1
            now = time.monotonic()
            if self.done == self.total or now - self._last >= PRINT_EVERY_S:
                self._last = now
                elapsed = now - self._start
                print(f"  {self.label}: {self.done}/{self.total} in {elapsed:.0f} s "
                      f"({self.done / max(elapsed, 1e-9):.1f}/s)", flush=True)


def track_map(label: str, fn, items, workers: int) -> list:
    """[fn(item) for item in items], run on `workers` threads, in order, with progress."""
    items = list(items)
    progress = Progress(label, len(items))

    def run(item):
        result = fn(item)
        progress.step()
        return result

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(run, items))
