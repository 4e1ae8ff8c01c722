"""`python -m bench.pool` (`make bench-pool`): one multi-threaded backend against a pool of
single-threaded ones, and what one gateway + backend pair costs per verify.

Both set-ups serve verify on LFW pairs at concurrency 4 through a real gateway:
  - one backend with the backend's default threads;
  - `--backends-per-model 2 --backend-threads 1`: two single-threaded backends.
For each it prints throughput, p50/p95 and the CPU seconds per request of the gateway
and of its backends (utime + stime from /proc/<pid>/stat before and after the run).
The CPU per request of one pair gives the projection for replicas: verify touches no
shared store, so N pairs on N times the cores answer at most N times one pair's rate.
That ratio is projected from CPU cost, not measured on a bigger machine.
"""
import argparse
import json
import os
import time

import httpx

from .datasets import require_shared
from .latency import PAIRS, QUICK_PAIRS, Workload, run_cell, sample_pairs
from .service import Service, running_gateway

CONCURRENCY = 4
REQUESTS, QUICK_REQUESTS = 200, 40
SETUPS = {
    "one backend, default threads": (),
    "two backends, 1 thread each": ("--backends-per-model", "2", "--backend-threads", "1"),
}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def backend_pids(svc: Service, expected: int) -> list[int]:
    """The pool's pids once every member is loaded and in the pool."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        models = httpx.get(svc.base_url + "/v1/models", timeout=30).json()
        members = models["data"][0].get("backends", [])
        if len(members) == expected and all(m["in_pool"] for m in members):
            return [m["pid"] for m in members]
        time.sleep(0.2)
    raise SystemExit(f"the pool did not reach {expected} loaded backends")


def measure(setup: tuple[str, ...], work: Workload, requests: int) -> dict:
    members = 2 if "--backends-per-model" in setup else 1
    bodies = [json.dumps(f).encode() for f in work.fields["verify"]]
    with running_gateway(args=setup) as svc:
        pids = backend_pids(svc, members)
        run_cell(svc, "/v1/face/verify", bodies, CONCURRENCY, 2 * CONCURRENCY)  # warm-up
        gateway_before, backends_before = cpu_seconds(svc.pid), sum(map(cpu_seconds, pids))
        cell = run_cell(svc, "/v1/face/verify", bodies, CONCURRENCY, requests)
        gateway_cpu = (cpu_seconds(svc.pid) - gateway_before) / requests
        backend_cpu = (sum(map(cpu_seconds, pids)) - backends_before) / requests
    return {**cell, "gateway_cpu_ms": gateway_cpu * 1000, "backend_cpu_ms": backend_cpu * 1000}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer pairs and requests (smoke run)")
    args = p.parse_args(argv)
    require_shared()
    work = Workload(sample_pairs(QUICK_PAIRS if args.quick else PAIRS))
    requests = QUICK_REQUESTS if args.quick else REQUESTS
    cores = os.cpu_count()
    print(f"verify at concurrency {CONCURRENCY}, {requests} requests, {cores} CPUs "
          f"(shared with whatever else runs)")
    results = {}
    for name, setup in SETUPS.items():
        r = results[name] = measure(setup, work, requests)
        print(f"  {name}: {r['rps']:.1f} verify/s, p50 {r['p50_ms']:.1f} ms, "
              f"p95 {r['p95_ms']:.1f} ms; CPU per request: gateway {r['gateway_cpu_ms']:.1f} ms, "
              f"backends {r['backend_cpu_ms']:.1f} ms", flush=True)
    one, pool = results.values()
    print(f"pool of single-threaded backends / one multi-threaded backend: "
          f"{pool['rps'] / one['rps']:.2f}x throughput")
    gateway_ms, pair_ms = one["gateway_cpu_ms"], one["gateway_cpu_ms"] + one["backend_cpu_ms"]
    # A pair on k cores answers at most k / (its CPU per verify), and never more than its
    # gateway's one event loop allows (1 / the gateway's CPU per verify).
    def capacity(cores: int, pairs: int) -> float:
        return min(cores * 1000 / pair_ms, pairs * 1000 / gateway_ms)
    print(f"one gateway + backend pair: {pair_ms:.1f} CPU-ms per verify ({gateway_ms:.1f} in "
          f"the gateway, whose event loop caps a pair at {1000 / gateway_ms:.0f} verify/s)")
    print(f"projected from that CPU cost (not measured on a bigger machine): a pair on 2 "
          f"dedicated cores <= {capacity(2, 1):.0f} verify/s; two pairs on 4 cores <= "
          f"{capacity(4, 2):.0f} verify/s = {capacity(4, 2) / capacity(2, 1):.2f}x one pair; "
          f"one pair alone on 4 cores (a pool of backends using them all) <= "
          f"{capacity(4, 1):.0f} verify/s")
    print(f"measured here, one pair: {one['rps']:.1f} verify/s keeping "
          f"{one['rps'] * pair_ms / 1000:.2f} of {cores} CPUs busy")

if __name__ == "__main__":
    main()
