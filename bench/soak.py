"""`python -m bench.soak` (`make soak`): does the service stay up, correct and flat in memory
under a steady mixed load?

8 clients on loopback send verify, analyze, embed, detection, register, identify, registry
listing, forget and the analysis of a large photo (2.4 MB, 1449x2173) in turn, for
SOAK_SECONDS (default 120) after a short warm-up, against a real gateway on the real pack:
more heavy calls than a backend has workers. A 503 must carry Retry-After and is sent again
after it. Prints the errors (requests lost), the 503s, p95 latency per route, backend
restarts and the resident memory of the gateway and its backends at start and end. It fails
(exit 1) on any request lost, any 503 without Retry-After or any backend restart; memory
growth under 10% is the goal (PASS/MISS). Registrations are forgotten again, so the registry
stays small.
"""
import collections
import concurrent.futures
import json
import os
import pathlib
import sys
import threading
import time

from . import metrics
from .datasets import FACES, b64, require_shared
from .latency import sample_pairs
from .service import Service, running_gateway

CLIENTS = 8
PAIRS = 16
WARM_UP_S = 10.0
GROWTH_GOAL = 0.10
ROUTES = ("verify", "analyze", "embed", "detection", "register", "identify", "registry", "forget",
          "analyze-large")
LARGE_PHOTO = "deepface/img26.jpg"


def rss_bytes(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def service_pids(gateway_pid: int) -> list[int]:
    """The gateway and the backend processes it started (its children)."""
    children = pathlib.Path(f"/proc/{gateway_pid}/task/{gateway_pid}/children").read_text()
    return [gateway_pid, *map(int, children.split())]


def memory(gateway_pid: int) -> dict[int, int]:
    return {pid: rss_bytes(pid) for pid in service_pids(gateway_pid)}


class Soak:
    """The request bodies, the ids registered and not yet forgotten, and what came back."""

    def __init__(self, svc: Service):
        self.svc = svc
        pairs = sample_pairs(PAIRS)
        encoded = [(b64(p.file1), b64(p.file2)) for p in pairs]
        images = [img for pair in encoded for img in pair]
        self.bodies = {
            "verify": [{"img1": a, "img2": b} for a, b in encoded],
            "analyze": [{"img": img} for img in images],
            "embed": [{"img": img} for img in images],
            "detection": [{"image": img} for img in images],
            # the gate off: a photo it refuses would count as an error of the soak
            "register": [{"img": img, "name": p.file1.parent.name, "labels": {"soak": "1"},
                          "quality_gate": "off"}
                         for img, p in zip(images[::2], pairs)],
            "identify": [{"img": img, "top_k": 5} for img in images],
            "analyze-large": [{"img": b64(FACES / LARGE_PHOTO), "actions": ["age", "gender"]}],
        }
        self.encoded = {op: [json.dumps(b).encode() for b in bodies]
                        for op, bodies in self.bodies.items()}
        self.ids = collections.deque()
        self.lock = threading.Lock()
        self.seconds = collections.defaultdict(list)
        self.errors = collections.Counter()
        self.refused = collections.Counter()  # 503s with Retry-After, each sent again

    def one(self, route: str, i: int) -> None:
        """One request, sent again after each 503 that says when to."""
        while (reply := self.once(route, i)) is not None and reply.status == 503 \
                and reply.retry_after:
            with self.lock:
                self.refused[route] += 1
            time.sleep(float(reply.retry_after))
        if reply is None:
            return
        with self.lock:
            self.seconds[route].append(reply.seconds)
            # 404: no face in that photo, an answer the API documents
            if reply.status >= 400 and reply.status != 404:
                self.errors[f"{route} {reply.status}"] += 1
            if route == "register" and reply.ok:
                self.ids.append(reply.body["id"])

    def once(self, route: str, i: int):
        """The reply to one request of `route`; None for a forget with nothing to forget."""
        if route == "registry":
            return self.svc.get("/v1/face/registry?limit=20")
        if route == "forget":
            with self.lock:
                record = self.ids.popleft() if self.ids else None
            if record is None:
                return None
            return self.svc.post("/v1/face/forget", id=record)
        path = {"detection": "/v1/detection", "analyze-large": "/v1/face/analyze"}.get(
            route, f"/v1/face/{route}")
        bodies = self.encoded[route]
        return self.svc.post_raw(path, bodies[i % len(bodies)])

    def client(self, index: int, until: float) -> None:
        i = index
        while time.monotonic() < until:
            try:
                self.one(ROUTES[i % len(ROUTES)], i)
            except OSError as exc:
                with self.lock:
                    self.errors[f"{ROUTES[i % len(ROUTES)]} {type(exc).__name__}"] += 1
            i += 1

    def run(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            for done in [pool.submit(self.client, n, until) for n in range(CLIENTS)]:
                done.result()

    def reset(self) -> None:
        self.seconds.clear()
        self.errors.clear()
        self.refused.clear()


def backend_starts(svc: Service) -> int:
    """Backend processes the gateway has started, over every model (restarts included)."""
    models = svc.get("/v1/models").body["data"]
    return sum(b["starts"] or 0 for m in models for b in m.get("backends", []))


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    require_shared()
    seconds = float(os.environ.get("SOAK_SECONDS", "120"))
    with running_gateway() as svc:
        soak = Soak(svc)
        soak.run(min(WARM_UP_S, seconds / 4))  # pools, caches and the allocator settle first
        soak.reset()
        start, starts = memory(svc.pid), backend_starts(svc)
        started = time.perf_counter()
        soak.run(seconds)
        elapsed = time.perf_counter() - started
        end, restarts = memory(svc.pid), backend_starts(svc) - starts
    total = sum(len(v) for v in soak.seconds.values())
    lost = sum(soak.errors.values())
    print(f"soak: {CLIENTS} clients, {elapsed:.0f} s, {total} requests "
          f"({total / elapsed:.1f}/s), {lost} lost (errors), "
          f"{sum(soak.refused.values())} 503s with Retry-After (sent again), "
          f"{restarts} backend restarts")
    for label, count in sorted(soak.errors.items()):
        print(f"  error {label}: {count}")
    for route, count in sorted(soak.refused.items()):
        print(f"  503 on {route}: {count}")
    print(f"{'route':<13} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for route in ROUTES:
        s = metrics.latency_summary(soak.seconds[route], elapsed) if soak.seconds[route] else None
        if s:
            print(f"{route:<13} {len(soak.seconds[route]):>8} {s['p50_ms']:>8.1f} "
                  f"{s['p95_ms']:>8.1f}")
    for pid in start:
        role = "gateway" if pid == svc.pid else "backend"
        print(f"{role} pid {pid}: RSS {mib(start[pid])} at start, {mib(end.get(pid, 0))} at end")
    before, after = sum(start.values()), sum(end.values())
    growth = (after - before) / before
    verdict = "PASS" if growth < GROWTH_GOAL else "MISS"
    print(f"RSS total {mib(before)} -> {mib(after)}: {growth:+.1%} "
          f"(goal under {GROWTH_GOAL:.0%}): {verdict}")
    held = lost == 0 and restarts == 0  # a 503 without Retry-After counts as lost
    print(f"0 requests lost, 0 backend restarts: {'PASS' if held else 'FAIL'}")
    if not held:
        sys.exit(1)


if __name__ == "__main__":
    main()
