"""Registry search at scale: local-store exact, local-store ANN and pgvector.

For N gallery records and a dimension it measures identify search p50/p95, start-up time
and memory, and recall the way identification is used: a query is another photo of an
enrolled identity, and recall is the share of queries whose genuine match the store ranks
first among those where exact search does. Embeddings are synthesised as identity clusters
whose genuine and impostor distance distributions match those of the real pack on
../shared/faces/lfw_grey (`--fit` measures them again; the fitted numbers are below).
Random unit vectors, the worst case for a graph index, are reported separately.

Each store is opened and searched in a child process, so start-up time and memory are
that process's own. pgvector HNSW builds are slow on 2 cores: pgvector is measured up to
--pg-max records (default 100k), and the output says so.

    python -m bench.store_bench [--sizes 10000,100000,1000000] [--dims 128,512] [--fit] [--quick]
"""
import argparse
import json
import pathlib
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

from .report import goal, goals_table, table, write_json

OUT = pathlib.Path(__file__).resolve().parent / "results"

# Fitted on the real pack (SCRFD-500M + MobileFaceNet, 128-d) with `--fit`: every same-person
# pair and 20000 random different-person pairs of lfw_grey photos (the first FIT_IDENTITIES
# identities with at least two photos). The model: identity centre c = normalise(ALPHA*g + z),
# photo = normalise(c + SIGMA*exp(KAPPA*e)*w), with g one shared direction,
# z, w ~ N(0, I/d) and e ~ N(0, 1).
# Measured 2026-11-29 (`python -m bench.store_bench --fit`): 607 genuine, 20000 impostor pairs.
REAL = {"genuine_mean": 0.3469, "genuine_std": 0.1194, "impostor_mean": 0.9952,
        "impostor_std": 0.0970}
FIT = {"alpha": 0.0864, "sigma": 0.6742, "kappa": 0.4}

FIT_IDENTITIES = 120
QUERIES = 200
TOP_K = 5
GOAL_P50_MS, GOAL_RECALL, GOAL_STARTUP_S = 5.0, 0.99, 5.0


# -- synthetic galleries ------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _photos(rng, centres: np.ndarray, fit: dict) -> np.ndarray:
    d = centres.shape[1]
    scale = fit["sigma"] * np.exp(fit["kappa"] * rng.standard_normal((len(centres), 1)))
    return _unit(centres + scale * rng.standard_normal(centres.shape) / np.sqrt(d))


def _centres(rng, g: np.ndarray, n: int, fit: dict) -> np.ndarray:
    d = len(g)
    return _unit(fit["alpha"] * g + rng.standard_normal((n, d)) / np.sqrt(d))


def gallery(kind: str, n: int, d: int, seed: int = 0):
    """(gallery vectors n x d, queries, index of each query's genuine identity or -1)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return (_unit(rng.standard_normal((n, d))), _unit(rng.standard_normal((QUERIES, d))),
                np.full(QUERIES, -1))
    g = _unit(rng.standard_normal(d))
    vectors = np.empty((n, d), np.float32)
    truth = np.sort(rng.choice(n, QUERIES, replace=False))
    queries = np.empty((QUERIES, d), np.float32)
    for start in range(0, n, 100_000):  # chunks: centres are never all held at once
        centres = _centres(rng, g, min(100_000, n - start), FIT)
        vectors[start:start + len(centres)] = _photos(rng, centres, FIT)
        mine = truth[(truth >= start) & (truth < start + len(centres))]
        queries[np.searchsorted(truth, mine)] = _photos(rng, centres[mine - start], FIT)
    return vectors, queries, truth


def fit(measured: dict, d: int = 128) -> dict:
    """Model parameters whose synthetic distances match the measured means and genuine spread."""
    rng = np.random.default_rng(1)
    sigma2 = 1 / (1 - measured["genuine_mean"]) - 1  # genuine cos ~ 1 / (1 + sigma^2)
    ratio = (1 - measured["impostor_mean"]) * (1 + sigma2)  # impostor cos ~ a^2/(1+a^2)/(1+s^2)
    alpha = float(np.sqrt(ratio / (1 - ratio))) if ratio > 0 else 0.0
    best = None
    for kappa in np.linspace(0, 0.6, 7):
        for s in np.sqrt(sigma2) * np.linspace(0.7, 1.3, 9):
            trial = {"alpha": alpha, "sigma": float(s), "kappa": float(kappa)}
            got = synthetic_distances(rng, trial, d)
            err = (abs(got["genuine_mean"] - measured["genuine_mean"])
                   + abs(got["genuine_std"] - measured["genuine_std"])
                   + abs(got["impostor_mean"] - measured["impostor_mean"]))
            if best is None or err < best[0]:
                best = (err, trial)
    return best[1]


def synthetic_distances(rng, params: dict, d: int, pairs: int = 2000) -> dict:
    g = _unit(rng.standard_normal(d))
    centres = _centres(rng, g, pairs, params)
    a, b = _photos(rng, centres, params), _photos(rng, centres, params)
    genuine = 1 - np.sum(a * b, axis=1)
    impostor = 1 - np.sum(a * np.roll(b, 1, axis=0), axis=1)
    return {"genuine_mean": float(genuine.mean()), "genuine_std": float(genuine.std()),
            "impostor_mean": float(impostor.mean()), "impostor_std": float(impostor.std())}


def measure_real() -> dict:
    """Genuine and impostor distances of the real pack on lfw_grey (never the holdout)."""
    from .datasets import b64, identities, require_shared
    from .pipeline import Pipeline

    require_shared()
    # The first FIT_IDENTITIES people (by name) with two photos or more: enough pairs for
    # means and spreads, and minutes rather than an hour of embedding on 2 cores.
    people = dict(list((name, files) for name, files in identities("lfw_grey").items()
                       if len(files) >= 2)[:FIT_IDENTITIES])
    pipeline = Pipeline()
    try:
        embedded = {}
        for i, (name, files) in enumerate(people.items()):
            embedded[name] = [_unit(pipeline.embed(b64(f))) for f in files]
            if i % 50 == 0:
                print(f"  embedded {i}/{len(people)} identities", flush=True)
    finally:
        pipeline.close()
    genuine = [1 - float(a @ b) for vs in embedded.values()
               for i, a in enumerate(vs) for b in vs[i + 1:]]
    rng = np.random.default_rng(0)
    names = list(embedded)
    impostor = []
    while len(impostor) < 20000:
        x, y = rng.choice(len(names), 2, replace=False)
        impostor.append(1 - float(embedded[names[x]][0] @ embedded[names[y]][-1]))
    return {"genuine_mean": float(np.mean(genuine)), "genuine_std": float(np.std(genuine)),
            "impostor_mean": float(np.mean(impostor)), "impostor_std": float(np.std(impostor)),
            "genuine_pairs": len(genuine), "impostor_pairs": len(impostor)}


# -- the stores, each in a child process ------------------------------------------------------

def write_local(path: pathlib.Path, vectors: np.ndarray) -> None:
    """A local store file holding `vectors` (bulk insert into the store's own schema)."""
    from gateway.registry import LocalStore

    LocalStore(path).close()  # creates the schema
    db = sqlite3.connect(path)
    d = vectors.shape[1]
    db.execute("BEGIN")
    for start in range(0, len(vectors), 100_000):
        chunk = vectors[start:start + 100_000]
        db.executemany(
            "INSERT INTO records (id, name, labels, model, dimension, embedding,"
            " registered_at) VALUES (?, ?, '{}', 'm', ?, ?, '2026-01-01T00:00:00.000Z')",
            ((str(uuid.UUID(int=start + i)), f"p{start + i}", d, row.tobytes())
             for i, row in enumerate(chunk)))
    db.commit()
    db.close()


def write_pgvector(dsn: str, vectors: np.ndarray) -> float:
    """Loads `vectors` into a fresh pgvector store; returns the HNSW build time (s)."""
    import psycopg

    from gateway.registry import PgVectorStore, Record

    store = PgVectorStore(dsn, "bench")
    store.add(Record.new("p0", {}, "m", vectors[0]))  # schema, model row and index exist
    store.close()
    d = vectors.shape[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        index = conn.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE"
                             " 'face_hnsw_%'").fetchone()[0]
        definition = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                                  (index,)).fetchone()[0]
        conn.execute(f"DROP INDEX {index}")  # a bulk build is far faster than N inserts
        with conn.cursor().copy("COPY face_records (id, name, labels, model, dimension,"
                                " embedding, registered_at, person_id) FROM STDIN") as copy:
            for i in range(1, len(vectors)):  # each face a person of its own
                copy.write_row((str(uuid.UUID(int=i)), f"p{i}", "{}", "m", d,
                                "[" + ",".join(map(repr, vectors[i].tolist())) + "]",
                                "2026-01-01T00:00:00.000Z", str(uuid.UUID(int=i))))
        conn.execute("SET maintenance_work_mem = '2GB'")
        started = time.perf_counter()
        conn.execute(definition)
        return time.perf_counter() - started


CHILD = """
import json, resource, sys, time
import numpy as np
kind, target, queries_path, ann = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
from gateway.registry import LocalStore, PgVectorStore
queries = np.load(queries_path)
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
before = rss()
started = time.perf_counter()
if kind == "local":
    import pathlib
    store = LocalStore(pathlib.Path(target), ann_threshold=1 if ann else None)
    store.wait_for_indexes()
else:
    store = PgVectorStore(target, "bench")
startup = time.perf_counter() - started
out = {"startup_s": startup, "rss_bytes": rss() - before}
for q in queries[:10]:  # warm-up
    store.search("m", q, %d)
times, top = [], []
for q in queries:
    t = time.perf_counter()
    hits = store.search("m", q, %d)
    times.append(time.perf_counter() - t)
    top.append(int(hits[0][0].name[1:]))
out["search_s"], out["top1"] = times, top
if kind == "local" and not ann:
    matrix = store._models["m"].exact.matrix[:store._models["m"].exact.size]
    bare = []
    for q in queries:
        t = time.perf_counter()
        np.argmax(matrix @ q)
        bare.append(time.perf_counter() - t)
    out["bare_matmul_s"] = bare
store.close()
print("RESULT " + json.dumps(out))
""" % (TOP_K, TOP_K)


def run_child(kind: str, target: str, queries: np.ndarray, ann: bool, tmp: pathlib.Path):
    np.save(tmp / "queries.npy", queries)
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, target, str(tmp / "queries.npy"),
                           "1" if ann else "0"], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).resolve().parent.parent)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"store child failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def exact_nearest(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Ground truth: each query's nearest row, by exact scan in chunks."""
    best, best_sim = np.zeros(len(queries), np.int64), np.full(len(queries), -np.inf)
    for start in range(0, len(vectors), 100_000):
        sims = vectors[start:start + 100_000] @ queries.T
        rows = np.argmax(sims, axis=0)
        better = sims[rows, np.arange(len(queries))] > best_sim
        best[better] = start + rows[better]
        best_sim[better] = sims[rows, np.arange(len(queries))][better]
    return best


def recall(top1: list[int], exact_top1: np.ndarray, truth: np.ndarray) -> float:
    """Clusters: genuine match ranked first where exact search ranks it first.
    Random vectors (no genuine match): the exact nearest ranked first."""
    top1 = np.asarray(top1)
    target = truth if truth[0] >= 0 else exact_top1
    judged = exact_top1 == target
    return float(np.mean(top1[judged] == target[judged])) if judged.any() else float("nan")


def ms(seconds) -> tuple[float, float]:
    values = np.asarray(seconds) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def bench_one(kind: str, n: int, d: int, args, pg) -> list[dict]:
    vectors, queries, truth = gallery(kind, n, d)
    exact_top1 = exact_nearest(vectors, queries)
    rows = []
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        path = tmp / "bench.sqlite3"
        t = time.perf_counter()
        write_local(path, vectors)
        print(f"  wrote {n} x {d} to SQLite in {time.perf_counter() - t:.0f} s", flush=True)
        for ann in (False, True)[:2 if n <= args.ann_max else 1]:
            label = "local ANN" if ann else "local exact"
            if ann:  # the first open builds and saves the index; the timed one loads it
                t = time.perf_counter()
                run_child("local", str(path), queries[:12], True, tmp)
                print(f"  built the ANN index in {time.perf_counter() - t:.0f} s", flush=True)
            r = run_child("local", str(path), queries, ann, tmp)
            p50, p95 = ms(r["search_s"])
            row = {"store": label, "vectors": kind, "n": n, "dim": d, "p50_ms": p50,
                   "p95_ms": p95, "startup_s": r["startup_s"],
                   "memory_mb": r["rss_bytes"] / 2**20,
                   "memory_x_raw": r["rss_bytes"] / vectors.nbytes,
                   "recall": recall(r["top1"], exact_top1, truth)}
            if "bare_matmul_s" in r:
                row["bare_matmul_p50_ms"] = ms(r["bare_matmul_s"])[0]
                row["x_bare_matmul"] = p50 / row["bare_matmul_p50_ms"]
            rows.append(row)
            print(f"  {label}: p50 {p50:.2f} ms, recall {row['recall']:.3f}", flush=True)
        if pg is not None and n <= args.pg_max:
            dsn = pg.fresh_database()
            build = write_pgvector(dsn, vectors)
            r = run_child("pgvector", dsn, queries, False, tmp)
            p50, p95 = ms(r["search_s"])
            rows.append({"store": "pgvector", "vectors": kind, "n": n, "dim": d,
                         "p50_ms": p50, "p95_ms": p95, "startup_s": r["startup_s"],
                         "index_build_s": build,
                         "recall": recall(r["top1"], exact_top1, truth)})
            print(f"  pgvector: p50 {p50:.2f} ms, build {build:.0f} s", flush=True)
    return rows


def markdown(results: dict) -> str:
    def cell(row, key, fmt):
        return fmt.format(row[key]) if row.get(key) is not None else "n/a"
    lines = ["# Registry store benchmark", "",
             f"Measured {results['when']} on this machine (2 cores, other work running); "
             f"{QUERIES} queries per row, top_k {TOP_K}. pgvector measured up to "
             f"{results['pg_max']} records (HNSW builds on 2 cores are slow), local ANN up "
             f"to {results['ann_max']}, random unit vectors up to {results['random_max']}.", "",
             "Identity clusters fitted to the real pack on lfw_grey: real distances "
             f"{json.dumps(REAL)}; model parameters {json.dumps(FIT)}; synthetic distances "
             f"per dimension {json.dumps(results['synthetic'])}.", ""]
    rows = [[r["store"], r["vectors"], r["n"], r["dim"], cell(r, "p50_ms", "{:.2f}"),
             cell(r, "p95_ms", "{:.2f}"), cell(r, "x_bare_matmul", "{:.2f}"),
             cell(r, "startup_s", "{:.2f}"), cell(r, "memory_mb", "{:.0f}"),
             cell(r, "memory_x_raw", "{:.2f}"), cell(r, "recall", "{:.4f}")]
            for r in results["rows"]]
    lines.append(table(["store", "vectors", "N", "dim", "p50 ms", "p95 ms", "x bare matmul",
                        "start-up s", "memory MB", "x raw", "recall@1"], rows))
    lines += ["", goals_table(results["goals"]), ""]
    return "\n".join(lines)


def goals(rows: list[dict]) -> list[dict]:
    out = []
    ann = [r for r in rows if r["store"] == "local ANN" and r["vectors"] == "clusters"
           and r["n"] == 1_000_000 and r["dim"] == 512]
    if ann:
        r = ann[0]
        out.append(goal("1M x 512 search p50 < 5 ms with recall >= 0.99 (local ANN)",
                        r["p50_ms"] < GOAL_P50_MS and r["recall"] >= GOAL_RECALL,
                        f"{r['p50_ms']:.2f} ms, recall {r['recall']:.4f}"))
    exact = [r for r in rows if r["store"] == "local exact" and r["vectors"] == "clusters"
             and r["n"] == 1_000_000 and r["dim"] == 128]
    if exact:
        r = exact[0]
        out.append(goal("1M x 128 start-up < 5 s (local exact)",
                        r["startup_s"] < GOAL_STARTUP_S, f"{r['startup_s']:.2f} s"))
    for r in rows:
        if r.get("x_bare_matmul") and r["vectors"] == "clusters" and r["n"] >= 100_000:
            out.append(goal(f"exact scan within 1.3x of a bare matmul ({r['n']} x {r['dim']})",
                            r["x_bare_matmul"] <= 1.3, f"{r['x_bare_matmul']:.2f}x"))
        if r.get("memory_x_raw") and r["store"] == "local exact" and r["n"] >= 100_000:
            out.append(goal(f"exact store memory within 1.5x raw ({r['n']} x {r['dim']})",
                            r["memory_x_raw"] <= 1.5, f"{r['memory_x_raw']:.2f}x"))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--dims", default="128,512")
    p.add_argument("--pg-max", type=int, default=100_000)
    p.add_argument("--random-max", type=int, default=100_000,
                   help="random-vector rows only up to this N (0: none)")
    p.add_argument("--ann-max", type=int, default=1_000_000,
                   help="local ANN rows only up to this N (index builds take long)")
    p.add_argument("--fit", action="store_true",
                   help="first measure the real pack's distances on lfw_grey, fit the model "
                        "and use (and print) that fit")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (CI): 2000 records of 128 numbers in every store")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.dims = "2000", "128"
        args.pg_max = args.random_max = args.ann_max = 2000
    if args.fit:
        REAL.update(measure_real())
        FIT.update(fit(REAL))
        print("REAL =", json.dumps(REAL), "\nFIT =", json.dumps(FIT), flush=True)
    pg = None
    if args.pg_max > 0:
        from .postgres import Postgres
        pg = Postgres()
    rows = []
    try:
        for n in map(int, args.sizes.split(",")):
            for d in map(int, args.dims.split(",")):
                for kind in ("clusters",) + (("random",) if n <= args.random_max else ()):
                    print(f"{kind} N={n} dim={d}", flush=True)
                    rows += bench_one(kind, n, d, args, pg if n <= args.pg_max else None)
                    report = write_report(rows, args)  # after every row: a cut run keeps them
    finally:
        if pg is not None:
            pg.close()
    print(report)


def write_report(rows: list[dict], args) -> str:
    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows,
               "pg_max": args.pg_max, "random_max": args.random_max, "ann_max": args.ann_max,
               "real": REAL, "fit": FIT, "synthetic": {
                   d: {k: round(v, 4) for k, v in synthetic_distances(
                       np.random.default_rng(0), FIT, d).items()}
                   for d in map(int, args.dims.split(","))},
               "goals": goals(rows),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    OUT.mkdir(exist_ok=True)
    write_json(OUT / "store.json", results)
    text = markdown(results)
    (OUT / "store.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
