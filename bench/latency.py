"""`python -m bench.latency` (`make bench-latency`): how fast the service is, and what it costs.

p50/p95 latency and throughput of verify, embed, identify and analyze through HTTP at
concurrency 1, 2, 4 and 8; the same pipeline in-process (the floor) and its
single-thread verify rate (the machine's limit = CPUs x that rate); cold start; and
the face_recognition peer verifying the same LFW pairs. Writes bench/results/latency.{md,json}.
"""
import argparse
import concurrent.futures
import datetime
import itertools
import json
import os
import pathlib
import threading
import time

import numpy as np

from . import metrics, peer, report
from .datasets import Pair, b64, lfw_pairs, require_shared
from .pipeline import PACK_NAME, Pipeline, PipelineError
from .service import Service, running_gateway

OPS = ("verify", "embed", "identify", "analyze")
ROUTES = {op: f"/v1/face/{op}" for op in OPS}
CONCURRENCY = (1, 2, 4, 8)  # 1 first: it is measured beside the floor
PAIRS, QUICK_PAIRS = 64, 16
REQUESTS, QUICK_REQUESTS = 96, 24  # per (operation, concurrency) cell
COLD_REQUESTS = 10
FOLD = 1
TOP_K = 5


def sample_pairs(n: int) -> list[Pair]:
    """n pairs of LFW fold 1, half same and half different, evenly spaced through the fold."""
    fold = [p for p in lfw_pairs() if p.fold == FOLD]
    half = []
    for same in (True, False):
        group = [p for p in fold if p.same == same]
        half.append([group[i * len(group) // (n // 2)] for i in range(n // 2)])
    return [p for both in zip(*half) for p in both]


class Workload:
    """The request fields of each operation, built once from the pairs' images."""

    def __init__(self, pairs: list[Pair]):
        encoded = [(b64(p.file1), b64(p.file2)) for p in pairs]
        self.same = [p.same for p in pairs]
        images = [img for pair in encoded for img in pair]
        # identify: the first photo of each pair is registered, the second is the probe
        self.gallery = [(img1, p.file1.parent.name) for (img1, _), p in zip(encoded, pairs)]
        self.fields = {
            "verify": [{"img1": a, "img2": b} for a, b in encoded],
            "embed": [{"img": img} for img in images],
            "identify": [{"img": b, "top_k": TOP_K} for _, b in encoded],
            "analyze": [{"img": img} for img in images],
        }


# -- the floor ------------------------------------------------------------------------

def floor_call(pipe: Pipeline, op: str, f: dict):
    """One in-process call; None when there is no face (answered, as the service's 404 is)."""
    try:
        if op == "verify":
            return pipe.verify(f["img1"], f["img2"])
        if op == "identify":
            return pipe.identify(f["img"], f["top_k"])
        return getattr(pipe, op)(f["img"])
    except PipelineError as exc:
        if exc.code.name != "NOT_FOUND":
            raise
        return None


def floor_verified(pipe: Pipeline, f: dict) -> bool:
    reply = floor_call(pipe, "verify", f)
    return reply is not None and reply.verified


def single_thread_rate(work: Workload, passes: int = 3) -> float:
    """In-process verifies per second with one onnxruntime thread and one caller: the
    median of a few passes over the pairs, since one pass of ~2 s swings with the machine."""
    pipe = Pipeline(threads=1)
    try:
        rates = []
        for _ in range(passes):
            started = time.perf_counter()
            for f in work.fields["verify"]:
                floor_verified(pipe, f)
            rates.append(len(work.fields["verify"]) / (time.perf_counter() - started))
        return float(np.median(rates))
    finally:
        pipe.close()


def _accuracy(verdicts, same) -> float:
    return metrics.rate([v == s for v, s in zip(verdicts, same)])


# -- through HTTP, beside the floor ------------------------------------------------------

def paired_calls(pipe: Pipeline, svc: Service, op: str, fields: list[dict],
                 bodies: list[bytes], requests: int) -> tuple[dict, dict]:
    """(floor, HTTP) at concurrency 1, calls alternating so that both see the same machine.

    One caller: requests/s is 1 / mean latency on both sides.
    """
    floor_s, http_s, no_face = [], [], 0
    for i in range(requests):
        started = time.perf_counter()
        floor_call(pipe, op, fields[i % len(fields)])
        floor_s.append(time.perf_counter() - started)
        reply = svc.post_raw(ROUTES[op], bodies[i % len(bodies)]).expect(ROUTES[op], 404)
        http_s.append(reply.seconds)
        no_face += not reply.ok
    return (metrics.latency_summary(floor_s, sum(floor_s)),
            {**metrics.latency_summary(http_s, sum(http_s)), "no_face": no_face})


def run_cell(svc: Service, route: str, bodies: list[bytes], concurrency: int,
             requests: int) -> dict:
    """`requests` POSTs shared by `concurrency` callers; per-request latency and throughput."""
    counter, lock = itertools.count(), threading.Lock()
    seconds, no_face = [], []

    def caller():
        while (i := next(counter)) < requests:
            reply = svc.post_raw(route, bodies[i % len(bodies)]).expect(route, 404)  # 404: no face
            with lock:
                seconds.append(reply.seconds)
                no_face.append(not reply.ok)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for done in [pool.submit(caller) for _ in range(concurrency)]:
            done.result()  # a caller's failure ends the run here
    summary = metrics.latency_summary(seconds, time.perf_counter() - started)
    return {**summary, "no_face": sum(no_face)}


def cold_start(svc: Service, work: Workload) -> dict:
    """The first verify after the gateway is ready against the tenth."""
    cold = [svc.post("/v1/face/verify", **work.fields["verify"][0]).expect("verify", 404).seconds
            for _ in range(COLD_REQUESTS)]
    print(f"  cold start: first verify {cold[0] * 1000:.0f} ms, "
          f"tenth {cold[-1] * 1000:.1f} ms", flush=True)
    return {"cold_first_ms": cold[0] * 1000, "cold_tenth_ms": cold[-1] * 1000,
            "cold_start_ratio": cold[0] / cold[-1]}


def measure(work: Workload, requests: int) -> dict:
    """Cold start, accuracy on the pairs, then every operation: floor and HTTP side by side."""
    pipe = Pipeline()
    try:
        with running_gateway() as svc:
            out = cold_start(svc, work)
            for img, name in work.gallery:
                pipe.register(img, name)
                svc.post("/v1/face/register", img=img, name=name, quality_gate="off").expect(
                    f"register {name}", 404)
            http_verdicts = []
            for f in work.fields["verify"]:
                r = svc.post("/v1/face/verify", **f).expect("verify", 404)
                http_verdicts.append(r.ok and r.body["verified"])
            out["service_accuracy_on_pairs"] = _accuracy(http_verdicts, work.same)
            out["floor_accuracy_on_pairs"] = _accuracy(
                [floor_verified(pipe, f) for f in work.fields["verify"]], work.same)
            out["floor"], out["http"] = {}, {}
            for op in OPS:
                fields = work.fields[op]
                bodies = [json.dumps(f).encode() for f in fields]
                svc.post_raw(ROUTES[op], bodies[0]).expect(ROUTES[op], 404)  # untimed first calls
                floor_call(pipe, op, fields[0])
                floor, cell = paired_calls(pipe, svc, op, fields, bodies, requests)
                out["floor"][op], out["http"][op] = floor, {"1": cell}
                print(f"  {op}: floor p50 {floor['p50_ms']:.1f} ms, http x1 p50 "
                      f"{cell['p50_ms']:.1f} ms", flush=True)
                for c in CONCURRENCY[1:]:
                    out["http"][op][str(c)] = cell = run_cell(svc, ROUTES[op], bodies, c, requests)
                    print(f"  {op}: http x{c} p50 {cell['p50_ms']:.1f} ms, "
                          f"p95 {cell['p95_ms']:.1f} ms, {cell['rps']:.1f}/s", flush=True)
    finally:
        pipe.close()
    return out


# -- the peer ------------------------------------------------------------------------

def measure_peer(pairs: list[Pair]) -> dict:
    why = peer.unavailable()
    if why:
        print(f"peer skipped: {why}")
        return {"skipped": why, "tolerance": peer.TOLERANCE}
    data = [(p.file1.read_bytes(), p.file2.read_bytes()) for p in pairs]
    peer.verify(*data[0])  # untimed: loads dlib's models
    seconds, verdicts = [], []
    for i, (a, b) in enumerate(data, 1):
        started = time.perf_counter()
        verdicts.append(peer.verify(a, b))
        seconds.append(time.perf_counter() - started)
        if i % 16 == 0 or i == len(data):
            print(f"  peer verify: {i}/{len(data)}", flush=True)
    return {**metrics.latency_summary(seconds), "tolerance": peer.TOLERANCE,
            "accuracy": _accuracy(verdicts, [p.same for p in pairs])}


def goals(r: dict) -> list[dict]:
    http1, floor = r["http"]["verify"]["1"]["p50_ms"], r["floor"]["verify"]["p50_ms"]
    out = [
        report.goal("verify through HTTP p50 within 1.15x of the in-process floor (concurrency 1)",
                    http1 <= 1.15 * floor, f"{http1:.1f} ms vs {floor:.1f} ms "
                                           f"({http1 / floor:.2f}x)"),
        report.goal("verify throughput at concurrency 4 at least 90% of the machine's limit",
                    r["throughput_c4_of_limit"] >= 0.9,
                    f"{r['throughput_rps']['4']:.1f}/s of {r['machine_limit_rps']:.1f}/s "
                    f"({report.pct(r['throughput_c4_of_limit'])})"),
        report.goal("verification accuracy through HTTP no lower than in-process (these pairs)",
                    r["service_accuracy_on_pairs"] >= r["floor_accuracy_on_pairs"],
                    f"{report.pct(r['service_accuracy_on_pairs'])} vs "
                    f"{report.pct(r['floor_accuracy_on_pairs'])}"),
    ]
    p = r["peer"]
    if not p.get("skipped"):
        out.append(report.goal(
            "faster than the peer per verify at equal or better accuracy",
            http1 < p["p50_ms"] and r["service_accuracy_on_pairs"] >= p["accuracy"],
            f"{http1:.1f} ms vs {p['p50_ms']:.1f} ms; {report.pct(r['service_accuracy_on_pairs'])} "
            f"vs {report.pct(p['accuracy'])}"))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_PAIRS} pairs and {QUICK_REQUESTS} requests per cell: a smoke "
                        "run, not the reported numbers")
    p.add_argument("--out", type=pathlib.Path, default=report.RESULTS, help="results folder")
    args = p.parse_args(argv)
    require_shared()
    started = time.monotonic()
    n_pairs, requests = (QUICK_PAIRS, QUICK_REQUESTS) if args.quick else (PAIRS, REQUESTS)
    pairs = sample_pairs(n_pairs)
    work = Workload(pairs)
    cpus = os.cpu_count() or 1
    print(f"{len(pairs)} LFW pairs, {requests} requests per cell")
    rate = single_thread_rate(work)
    print(f"  single-thread in-process verify rate {rate:.2f}/s; starting the gateway", flush=True)
    results = measure(work, requests)
    results["peer"] = measure_peer(pairs)
    verify_http = results["http"]["verify"]
    results.update(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        cpu_count=cpus, quick=args.quick, model=PACK_NAME, pairs=len(pairs),
        requests_per_cell=requests,
        verify_http_p50_ms=verify_http["1"]["p50_ms"],
        verify_floor_p50_ms=results["floor"]["verify"]["p50_ms"],
        verify_http_over_floor=verify_http["1"]["p50_ms"] / results["floor"]["verify"]["p50_ms"],
        floor_1thread_rps=rate, machine_limit_rps=cpus * rate,
        throughput_rps={c: s["rps"] for c, s in verify_http.items()},
        throughput_c4_of_limit=verify_http["4"]["rps"] / (cpus * rate),
        peer_verify_p50_ms=results["peer"].get("p50_ms"))
    results["goals"] = goals(results)
    results["seconds"] = time.monotonic() - started
    written = report.write_latency_report(args.out, results)
    print()
    print(report.latency_markdown(results))
    print("wrote " + ", ".join(str(w) for w in written))


if __name__ == "__main__":
    main()
