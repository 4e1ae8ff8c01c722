"""`python -m bench.accuracy` (`make bench-accuracy`): how right the service is, through HTTP.

On ../shared/faces: LFW verification (LFW protocol over the 5 folds present, TAR at
FAR, EER), 1:N rank-1 per photo set, open-set 1:N (FNIR at FPIR, FPIR at the default
identify threshold, bench/openset.py), person-level identify by aggregation rule
(bench/persons.py, persons.md), group photos (bench/groups.py), clustering unknown faces
(bench/clustering.py), liveness APCER/BPCER, UTKFace gender and age;
beside them, on LFW fold 1, the verify endpoint, the same pipeline in-process and
the face_recognition peer; face quality's EDC and enrolment gate (bench/quality.py). Writes
bench/results/accuracy.{md,json}, roc.png, distances.png, det.png, quality.md, quality_edc.png.
"""
import argparse
import datetime
import os
import pathlib
import time

import numpy as np

from . import clustering, groups, metrics, openset, peer, persons, quality, report
from .datasets import (Pair, b64, identities, labelled_faces, labels, lfw_pairs,
                       people_in_fixed_order, require_shared)
from .pipeline import DEFAULT_THRESHOLD, PACK_NAME, Pipeline, PipelineError
from .progress import track_map
from .service import Reply, Service, running_gateway

IDENTITY_SETS = ("lfw_grey", "deepface", "face_recognition", "facenet_pytorch", "insightface")
LIVENESS_SETS = ("nuaa", "silent_face", "liveness_opencv_frames")
LFW_IDENTITIES = 150  # bounded: 746 LFW identities have two or more photos
COMPARISON_FOLD = 1
ADULT_AGES = (18, 60)  # inclusive, for the UTKFace rows of adults only
TOO_TIGHT = "cropped too tightly"
QUICK_PAIR_STEP = 5  # --quick: every 5th pair of each fold
QUICK_LFW_IDENTITIES = 30
QUICK_OPENSET_PEOPLE = 400  # --quick: the first people of the fixed order


# -- LFW verification -----------------------------------------------------------------

def embed_images(svc: Service, paths, workers: int) -> dict[pathlib.Path, np.ndarray | None]:
    def one(path):
        r = svc.post("/v1/face/embed", img=b64(path)).expect(f"embed {path.name}", 404)
        return np.asarray(r.body["embedding"], np.float64) if r.ok else None  # 404: no face
    paths = sorted(paths)
    return dict(zip(paths, track_map("embed", one, paths, workers)))


def cosine_distances(pairs: list[Pair], vectors: dict) -> np.ndarray:
    out = []
    for p in pairs:
        a, b = vectors[p.file1], vectors[p.file2]
        out.append(metrics.NO_FACE_DISTANCE if a is None or b is None else 1.0 - float(a @ b))
    return np.asarray(out)


def unique_files(pairs: list[Pair]) -> set[pathlib.Path]:
    return {f for p in pairs for f in (p.file1, p.file2)}


def verify_pairs(svc: Service, pairs: list[Pair], workers: int) -> list[Reply]:
    def one(p: Pair):
        return svc.post("/v1/face/verify", img1=b64(p.file1), img2=b64(p.file2)).expect(
            f"verify {p.file1.name} {p.file2.name}", 404)
    return track_map("verify", one, pairs, workers)


def verification(distances: np.ndarray, pairs: list[Pair], threshold: float) -> dict:
    same = np.array([p.same for p in pairs])
    kfold = metrics.kfold_accuracy(distances, same, [p.fold for p in pairs])
    tar2, thr2 = metrics.tar_at_far(distances, same, 1e-2)
    tar3, thr3 = metrics.tar_at_far(distances, same, 1e-3)
    eer, eer_thr = metrics.equal_error_rate(distances, same)
    return {
        "lfw_pairs": len(pairs), "lfw_impostor_pairs": int((~same).sum()),
        "lfw_accuracy": kfold["mean"], "lfw_accuracy_std": kfold["std"],
        "lfw_fold_accuracies": kfold["fold_accuracies"],
        "lfw_fold_thresholds": kfold["fold_thresholds"],
        "lfw_accuracy_at_default_threshold": metrics.accuracy(distances, same, threshold),
        "lfw_tar_at_far_1e-2": tar2, "lfw_threshold_at_far_1e-2": thr2,
        "lfw_tar_at_far_1e-3": tar3, "lfw_threshold_at_far_1e-3": thr3,
        "lfw_eer": eer, "lfw_eer_threshold": eer_thr,
    }


# -- identification, liveness, attributes -----------------------------------------------

def identity_galleries(quick: bool) -> dict[str, dict[str, list[pathlib.Path]]]:
    """Photos by identity for each set; LFW limited to evenly spaced identities with 2+ photos."""
    galleries = {name: identities(name) for name in IDENTITY_SETS}
    lfw = {k: v for k, v in galleries["lfw_grey"].items() if len(v) >= 2}
    keep = QUICK_LFW_IDENTITIES if quick else LFW_IDENTITIES
    names = sorted(lfw)
    chosen = [names[i * len(names) // keep] for i in range(keep)]
    galleries["lfw_grey"] = {n: lfw[n] for n in chosen}
    return galleries


def identify_set(svc: Service, store: str, people: dict[str, list[pathlib.Path]],
                 workers: int) -> dict:
    """In its own store: register the first photo of each identity, identify the others."""
    def register(item):
        name, photos = item
        # The gate off: rank-1 measures the recognizer on every photo (bench/quality.py the gate).
        r = svc.post("/v1/face/register", img=b64(photos[0]), name=name, store=store,
                     quality_gate="off")
        return name if r.expect(f"register {photos[0].name}", 404).ok else None  # 404: no face

    def identify(probe):
        """(right person first, right person first and within the threshold); None: no face."""
        name, photo = probe
        r = svc.post("/v1/face/identify", img=b64(photo), top_k=1, store=store).expect(
            f"identify {photo.name}", 404)
        if not r.ok:
            return None, False
        best = r.body["matches"][0]
        return best["name"] == name, best["name"] == name and best["match"]

    registered = {n for n in track_map(f"register {store}", register, people.items(), workers) if n}
    probes = [(name, photo) for name in sorted(registered) for photo in people[name][1:]]
    results = track_map(f"identify {store}", identify, probes, workers)
    return {"identities": len(registered), "unregistered": len(people) - len(registered),
            "probes": len(probes), "no_face": sum(hit is None for hit, _ in results),
            "rank1": metrics.rate([bool(hit) for hit, _ in results]),
            "matched": metrics.rate([matched for _, matched in results]),
            "hits": sum(bool(hit) for hit, _ in results),
            "hits_matched": sum(matched for _, matched in results)}


def identification(svc: Service, galleries: dict, workers: int) -> dict:
    by_set = {store: identify_set(svc, store, people, workers)
              for store, people in galleries.items()}
    probes = max(sum(s["probes"] for s in by_set.values()), 1)
    return {"rank1": sum(s["hits"] for s in by_set.values()) / probes,
            "rank1_matched": sum(s["hits_matched"] for s in by_set.values()) / probes,
            "rank1_by_set": by_set}


def liveness(svc: Service, workers: int) -> dict:
    def one(row):
        r = svc.post("/v1/face/analyze", img=b64(row["path"]), anti_spoofing=True).expect(
            f"analyze {row['file']}", 400)
        if not r.ok:
            if TOO_TIGHT not in r.error:
                raise SystemExit(f"analyze {row['file']}: HTTP 400 {r.error}")
            return "refused"
        return r.body["faces"][0]["is_real"] if r.body["faces"] else "no face"
    by_set, truth_all, pred_all = {}, [], []
    for folder in LIVENESS_SETS:
        rows = labels(folder)
        verdicts = track_map(f"liveness {folder}", one, rows, workers)
        scored = [(row["is_real"] == "1", v)
                  for row, v in zip(rows, verdicts) if isinstance(v, bool)]
        truth, pred = [t for t, _ in scored], [v for _, v in scored]
        by_set[folder] = {**metrics.liveness_rates(truth, pred),
                          "refused": verdicts.count("refused"),
                          "no_face": verdicts.count("no face")}
        truth_all += truth
        pred_all += pred
    overall = metrics.liveness_rates(truth_all, pred_all)
    return {"liveness_accuracy": overall["accuracy"], "liveness_apcer": overall["apcer"],
            "liveness_bpcer": overall["bpcer"], "liveness_scored": overall["n"],
            "liveness_by_set": by_set}


def age_gender(svc: Service, workers: int) -> dict:
    rows = labels("utkface")

    def one(row):
        r = svc.post("/v1/face/analyze", img=b64(row["path"]),
                     actions=["age", "gender"]).expect(f"analyze {row['file']}")
        return r.body["faces"][0] if r.body["faces"] else None
    faces = track_map("age/gender utkface", one, rows, workers)
    words = {"M": "Man", "F": "Woman"}

    def scores(found):
        return (metrics.rate([f["dominant_gender"] == words[row["gender"]] for row, f in found]),
                metrics.mean_absolute_error([float(row["age"]) for row, _ in found],
                                            [f["age"] for _, f in found]))
    found = [(row, f) for row, f in zip(rows, faces) if f is not None]
    # The sample is stratified by age band, so most of it is children and the elderly.
    adults = [(row, f) for row, f in found if ADULT_AGES[0] <= int(row["age"]) <= ADULT_AGES[1]]
    gender, age = scores(found)
    gender_adults, age_adults = scores(adults)
    return {"utkface_images": len(rows), "utkface_no_face": len(rows) - len(found),
            "utkface_adults": len(adults), "utkface_adult_ages": list(ADULT_AGES),
            "gender_accuracy": gender, "age_mae": age,
            "gender_accuracy_adults": gender_adults, "age_mae_adults": age_adults}


# -- the same fold beside the in-process pipeline and the peer -----------------------------

def inprocess_distances(pairs: list[Pair], workers: int) -> np.ndarray:
    pipe = Pipeline()
    try:
        def one(path):
            try:
                return pipe.embed(b64(path)).astype(np.float64)
            except PipelineError as exc:
                if exc.code.name != "NOT_FOUND":
                    raise
                return None  # no face
        paths = sorted(unique_files(pairs))
        vectors = dict(zip(paths, track_map("in-process embed", one, paths, workers)))
    finally:
        pipe.close()
    return cosine_distances(pairs, vectors)


def peer_verdicts(pairs: list[Pair], workers: int) -> tuple[list[bool] | None, int, str]:
    """(verified per pair, pairs with a missing face, why skipped)."""
    why = peer.unavailable()
    if why:
        print(f"peer skipped: {why}")
        return None, 0, why
    encodings = peer.encode_files(sorted(unique_files(pairs)), workers)
    dists = [peer.distance(encodings[p.file1], encodings[p.file2]) for p in pairs]
    return [d is not None and d <= peer.TOLERANCE for d in dists], dists.count(None), ""


def comparison(pairs: list[Pair], replies: list[Reply], service_distances: np.ndarray,
               workers: int) -> dict:
    same = np.array([p.same for p in pairs])
    verified = [r.ok and r.body["verified"] for r in replies]
    answered = [(r.body["distance"], d) for r, d in zip(replies, service_distances) if r.ok]
    local = service_distances < DEFAULT_THRESHOLD
    inproc = inprocess_distances(pairs, workers)
    peer_verified, peer_no_face, skipped = peer_verdicts(pairs, workers)
    missing = metrics.NO_FACE_DISTANCE
    return {
        "sample": f"LFW fold {COMPARISON_FOLD} ({len(pairs)} pairs)", "pairs": len(pairs),
        "verify_endpoint_accuracy": metrics.rate(np.array(verified) == same),
        "verify_endpoint_no_face": sum(not r.ok for r in replies),
        "embed_endpoint_accuracy": metrics.accuracy(service_distances, same, DEFAULT_THRESHOLD),
        "embed_endpoint_no_face": int((service_distances >= missing).sum()),
        "verify_embed_agreement": metrics.rate(np.array(verified) == local),
        "max_distance_difference": max((abs(a - b) for a, b in answered), default=float("nan")),
        "inprocess_accuracy": metrics.accuracy(inproc, same, DEFAULT_THRESHOLD),
        "inprocess_no_face": int((inproc >= missing).sum()),
        "peer_tolerance": peer.TOLERANCE,
        "peer_accuracy": (None if peer_verified is None
                          else metrics.rate(np.array(peer_verified) == same)),
        "peer_no_face": peer_no_face, "peer_skipped": skipped,
    }


def open_set(vectors: dict, people, identify_threshold: float) -> tuple[dict, dict]:
    """(results for accuracy.json, DET curves by gallery size)."""
    found = openset.evaluate(vectors, people, identify_threshold, DEFAULT_THRESHOLD)
    by_n = {str(row["N"]): row for row in found["rows"]}
    return {"openset_by_n": found["rows"], "openset_identify_threshold": identify_threshold,
            **{name: {n: row[key] for n, row in by_n.items()} for name, key in (
                ("openset_fnir_at_fpir_1e-2", "fnir_at_fpir_0.01"),
                ("openset_fnir_at_fpir_1e-3", "fnir_at_fpir_0.001"))},
            "openset_fpir_at_default": {n: row["fpir_at_identify_threshold"]
                                        for n, row in by_n.items()}}, found["curves"]


def goals(r: dict) -> list[dict]:
    c = r["comparison"]
    worst = max(r["openset_fpir_at_default"].items(), key=lambda kv: kv[1])
    out = [report.goal("never-enrolled probes matched at the default identify threshold: at "
                       "most 1% at every gallery size", worst[1] <= 0.01,
                       f"at most {report.pct(worst[1])} (N = {worst[0]})"),
           report.goal("verification accuracy through HTTP no lower than in-process "
                       f"({c['sample']}, default threshold)",
                       c["verify_endpoint_accuracy"] >= c["inprocess_accuracy"],
                       f"{report.pct(c['verify_endpoint_accuracy'])} vs "
                       f"{report.pct(c['inprocess_accuracy'])}")]
    if c["peer_accuracy"] is not None:
        out.append(report.goal(f"accuracy equal to or better than the peer's ({c['sample']})",
                               c["verify_endpoint_accuracy"] >= c["peer_accuracy"],
                               f"{report.pct(c['verify_endpoint_accuracy'])} vs "
                               f"{report.pct(c['peer_accuracy'])}"))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"every {QUICK_PAIR_STEP}th LFW pair and {QUICK_LFW_IDENTITIES} LFW "
                        "identities: a smoke run, not the reported numbers")
    p.add_argument("--out", type=pathlib.Path, default=report.RESULTS, help="results folder")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="concurrent requests (default: CPU count)")
    args = p.parse_args(argv)
    require_shared()
    started = time.monotonic()
    pairs = lfw_pairs()
    if args.quick:
        pairs = pairs[::QUICK_PAIR_STEP]
    fold = [p for p in pairs if p.fold == COMPARISON_FOLD]
    galleries = identity_galleries(args.quick)
    people = people_in_fixed_order(labelled_faces())
    if args.quick:
        people = people[:QUICK_OPENSET_PEOPLE]
    people_photos = {p for _, photos in people for p in photos}
    print(f"{len(pairs)} LFW pairs over {len(unique_files(pairs))} images; starting the gateway")
    with running_gateway(stores=IDENTITY_SETS) as svc:
        vectors = embed_images(svc, unique_files(pairs) | people_photos, args.workers)
        replies = verify_pairs(svc, fold, args.workers)
        found = identification(svc, galleries, args.workers)
        identify_threshold = svc.post("/v1/face/identify", img=b64(fold[0].file1), top_k=1,
                                      store="lfw_grey").expect("identify").body["threshold"]
        live = liveness(svc, args.workers)
        attrs = age_gender(svc, args.workers)
    distances = cosine_distances(pairs, vectors)
    fold_distances = cosine_distances(fold, vectors)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(), "quick": args.quick, "model": PACK_NAME,
        "default_threshold": DEFAULT_THRESHOLD, "lfw_images": len(unique_files(pairs)),
        "lfw_no_face_images": sum(vectors[p] is None for p in unique_files(pairs)),
        **verification(distances, pairs, DEFAULT_THRESHOLD), **found, **live, **attrs,
        "comparison": comparison(fold, replies, fold_distances, args.workers),
    }
    open_results, det_curves = open_set(vectors, people, identify_threshold)
    results.update(open_results)
    results["persons"] = persons.report_on(vectors, people, args.out, args.quick)
    # In-process on the real pack, through the gateway's own assignment and clustering code.
    results["groups"] = groups.report_on(args.out, args.quick, args.workers)
    results["clustering"] = clustering.report_on(args.out, args.quick, args.workers)
    c = results["comparison"]
    results.update(peer_lfw_accuracy=c["peer_accuracy"], peer_sample=c["sample"],
                   service_accuracy_on_peer_sample=c["verify_endpoint_accuracy"])
    results["goals"] = goals(results)
    results["seconds"] = time.monotonic() - started
    written = report.write_accuracy_report(args.out, results, distances, [p.same for p in pairs],
                                           det_curves)
    print()
    print(report.accuracy_markdown(results))
    print("wrote " + ", ".join(str(w) for w in written))
    print("\n".join(quality.run(args.out, args.quick, args.workers)))


if __name__ == "__main__":
    main()
