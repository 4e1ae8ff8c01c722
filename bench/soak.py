"""`python -m bench.soak` (`make soak`): does the service stay up, correct and flat in memory
under a steady mixed load?

8 clients on loopback send verify, analyze, embed, detection, register, identify, registry
listing and forget requests in turn, for SOAK_SECONDS (default 120) after a short warm-up,
against a real gateway on the real pack. Prints the error count, p95 latency per route and
the resident memory of the gateway and its backends at start and end; memory growth under
10% is the goal (PASS/MISS). Registrations are forgotten again, so the registry stays small.
"""
import collections
import concurrent.futures
import json
import os
import pathlib
import threading
import time

from . import metrics
from .datasets import b64, require_shared
from .latency import sample_pairs
from .service import Service, running_gateway

CLIENTS = 8
PAIRS = 16
WARM_UP_S = 10.0
GROWTH_GOAL = 0.10
ROUTES = ("verify", "analyze", "embed", "detection", "register", "identify", "registry", "forget")


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
        }
        self.encoded = {op: [json.dumps(b).encode() for b in bodies]
                        for op, bodies in self.bodies.items()}
        self.ids = collections.deque()
        self.lock = threading.Lock()
        self.seconds = collections.defaultdict(list)
        self.errors = collections.Counter()

    def one(self, route: str, i: int) -> None:
        if route == "registry":
            reply = self.svc.get("/v1/face/registry?limit=20")
        elif route == "forget":
            with self.lock:
                record = self.ids.popleft() if self.ids else None
            if record is None:
                return
            reply = self.svc.post("/v1/face/forget", id=record)
        else:
            path = "/v1/detection" if route == "detection" else f"/v1/face/{route}"
            bodies = self.encoded[route]
            reply = self.svc.post_raw(path, bodies[i % len(bodies)])
        with self.lock:
            self.seconds[route].append(reply.seconds)
            # 404: no face in that photo, an answer the API documents
            if reply.status >= 400 and reply.status != 404:
                self.errors[f"{route} {reply.status}"] += 1
            if route == "register" and reply.ok:
                self.ids.append(reply.body["id"])

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


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    require_shared()
    seconds = float(os.environ.get("SOAK_SECONDS", "120"))
    with running_gateway() as svc:
        soak = Soak(svc)
        soak.run(min(WARM_UP_S, seconds / 4))  # pools, caches and the allocator settle first
        soak.reset()
        start = memory(svc.pid)
        started = time.perf_counter()
        soak.run(seconds)
        elapsed = time.perf_counter() - started
        end = memory(svc.pid)
    total = sum(len(v) for v in soak.seconds.values())
    print(f"soak: {CLIENTS} clients, {elapsed:.0f} s, {total} requests "
          f"({total / elapsed:.1f}/s), {sum(soak.errors.values())} errors")
    for label, count in sorted(soak.errors.items()):
        print(f"  error {label}: {count}")
    print(f"{'route':<10} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for route in ROUTES:
        s = metrics.latency_summary(soak.seconds[route], elapsed) if soak.seconds[route] else None
        if s:
            print(f"{route:<10} {len(soak.seconds[route]):>8} {s['p50_ms']:>8.1f} "
                  f"{s['p95_ms']:>8.1f}")
    for pid in start:
        role = "gateway" if pid == svc.pid else "backend"
        print(f"{role} pid {pid}: RSS {mib(start[pid])} at start, {mib(end.get(pid, 0))} at end")
    before, after = sum(start.values()), sum(end.values())
    growth = (after - before) / before
    verdict = "PASS" if growth < GROWTH_GOAL else "MISS"
    print(f"RSS total {mib(before)} -> {mib(after)}: {growth:+.1%} "
          f"(goal under {GROWTH_GOAL:.0%}): {verdict}")


if __name__ == "__main__":
    main()
