"""Registering many photos: `imgs` on register, and `face-gateway enroll` over a real gateway
and real backend (the whole lfw_grey tree, then an interrupted run that resumes)."""
import base64
import collections
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from gateway.enroll import find_photos, read_label_csv
from gateway_support import gateway_process, write_config
from support import FACES, ROOT, image_b64, needs_shared, read_labels

pytestmark = needs_shared

MODEL = "test-pack"
LFW = FACES / "lfw_grey"
SUMMARY = re.compile(r"registered (\d+), skipped (\d+) \(already registered\), no face (\d+), "
                     r"refused by the quality gate (\d+), failed (\d+) of (\d+) images")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_config(models, MODEL)
    with gateway_process(models, tmp_path_factory.mktemp("data"), "--default-model", MODEL,
                         "--store", "local-store", "--store", "small", "--store", "hostile",
                         # on a few cores, single-threaded backends side by side enrol fastest
                         "--backends-per-model", "2", "--backend-threads", "1") as (_, url), \
            httpx.Client(base_url=url, timeout=120) as client:
        yield client


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def people(min_photos: int) -> dict[str, list[str]]:
    by_person = collections.defaultdict(list)
    for row in read_labels("lfw_grey"):
        by_person[row["identity"]].append(row["file"])
    return {name: sorted(files) for name, files in sorted(by_person.items())
            if len(files) >= min_photos}


def registry(client, **params) -> list[dict]:
    items, offset = [], 0
    while page := ok(client.get("/v1/face/registry",
                                params={**params, "limit": 1000, "offset": offset}))["items"]:
        items += page
        offset += len(page)
    return items


def enroll(url: str, folder, *args: str, store: str = "local-store", **popen):
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "enroll", str(folder), "--model", MODEL,
         "--url", url, "--store", store, "--refused-csv", os.devnull, *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finished(proc) -> tuple[tuple[int, ...], str, str]:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out + err
    return tuple(int(n) for n in SUMMARY.search(out).groups()), out, err


def blank_jpeg() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (120, 120), (128, 128, 128)).save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def test_register_several_photos_as_records_or_one_template(gw):
    name, files = next(iter(people(4).items()))
    off = {"quality_gate": "off"}  # one of these photos is darker than the default gate takes
    photos = [image_b64(LFW / f) for f in files[:3]]
    probe = image_b64(LFW / files[3])
    several = ok(gw.post("/v1/face/register", json={"imgs": photos, "name": name,
                                                    "labels": {"set": "imgs"}, **off}))
    assert len(several["ids"]) == 3 and several["id"] == several["ids"][0]
    faces = [r for r in registry(gw, name=name) if r["id"] in several["ids"]]
    assert {r["person_id"] for r in faces} == {several["person_id"]}  # one person
    template = ok(gw.post("/v1/face/register", json={"imgs": photos, "name": name,
                                                     "template": True, **off}))
    assert template["ids"] == [template["id"]]
    single = ok(gw.post("/v1/face/register", json={"img": photos[0], "name": name, **off}))
    assert "ids" not in single  # the one-photo answer keeps its shape
    matches = ok(gw.post("/v1/face/identify", json={"img": probe, "top_k": 10}))["matches"]
    distance = {m["id"]: m["distance"] for m in matches}
    assert set(several["ids"]) | {template["id"]} <= set(distance)
    # The probe is nearer the mean than the photos are on average (cosine of a mean).
    assert distance[template["id"]] <= sum(distance[i] for i in several["ids"]) / 3 + 1e-6
    assert {m["name"] for m in matches if m["id"] in distance} == {name}

    # The same as a form upload: one `imgs` file part per photo.
    uploaded = ok(gw.post("/v1/face/register", data={"name": name, **off}, files=[
        ("imgs", (f.split("/")[-1], (LFW / f).read_bytes(), "image/jpeg")) for f in files[:2]]))
    assert len(uploaded["ids"]) == 2

    # A photo without a face fails the request, names the photo and stores nothing.
    before = len(registry(gw, name=name))
    failed = gw.post("/v1/face/register", json={"imgs": [photos[0], blank_jpeg()], "name": name})
    assert failed.status_code == 404 and "imgs[1]" in failed.json()["error"]["message"]
    assert len(registry(gw, name=name)) == before


def test_enroll_lfw_grey_then_a_second_run_registers_nothing(gw):
    url = str(gw.base_url)
    first = enroll(url, LFW, "--labels", str(LFW / "labels.csv"), "--concurrency", "4")
    (registered, skipped, no_face, refused, failed, total), out, err = finished(first)
    print(f"\nfirst run: {out.strip().splitlines()[-1]}")
    photos = list(LFW.rglob("*.jpg"))
    assert total == len(photos) and (skipped, failed) == (0, 0)
    assert registered + no_face + refused == total and registered > 0.95 * total
    assert refused <= 0.03 * total  # the default gate keeps nearly every lfw_grey photo
    # One `no face: PATH` or `refused: PATH: ...` line each, where the CSV went, the counts.
    assert len(out.splitlines()) == no_face + refused + bool(refused) + 1
    assert re.search(r"enroll \[#+ *\] \d+/\d+ +\d+% +[\d.]+ img/s ETA \d\d:\d\d:\d\d", err), err
    records = registry(gw, model=MODEL, store="local-store")
    enrolled = [r for r in records if "source" in r["labels"]]
    assert len(enrolled) == registered
    assert len({r["labels"]["source"] for r in enrolled}) == registered
    sample = next(r for r in enrolled if r["labels"]["source"] == "Aaron_Sorkin/Aaron_Sorkin_0001.jpg")
    assert sample["name"] == "Aaron_Sorkin" and sample["labels"]["identity"] == "Aaron_Sorkin"

    again, out, _ = finished(enroll(url, LFW, "--concurrency", "4"))
    assert again == (0, registered, no_face, refused, 0, total), out
    assert len(registry(gw, model=MODEL, store="local-store")) == len(records)


def test_interrupted_enroll_resumes_without_duplicates(gw, tmp_path):
    tree = tmp_path / "people"
    for name, files in list(people(3).items())[:10]:
        for f in files[:3]:
            (tree / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(LFW / f, tree / name / f.split("/")[-1])
    photos = sorted(tree.rglob("*.jpg"))
    url = str(gw.base_url)

    def count():
        return ok(gw.get("/v1/face/registry", params={"store": "small", "limit": 1}))["total"]

    first = enroll(url, tree, "--concurrency", "1", store="small")
    deadline = time.monotonic() + 120
    while count() < 5:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    before = -1
    while before != (before := count()):  # a request the kill cut off may still be stored
        time.sleep(1.0)
    assert 5 <= before < len(photos)
    (registered, skipped, no_face, refused, failed, total), _, _ = finished(
        enroll(url, tree, "--concurrency", "2", store="small"))
    assert (skipped, total, failed) == (before, len(photos), 0)
    sources = [r["labels"]["source"] for r in registry(gw, store="small")]
    assert len(sources) == len(set(sources)) == before + registered == (
        len(photos) - no_face - refused)
    persons = {}  # one person per folder, across the two runs
    for r in registry(gw, store="small"):
        persons.setdefault(r["name"], set()).add(r["person_id"])
    assert len(persons) == 10 and all(len(ids) == 1 for ids in persons.values())
    listed = ok(gw.get("/v1/face/people", params={"store": "small"}))
    assert listed["total"] == 10 and sum(p["faces"] for p in listed["items"]) == len(sources)


def test_enroll_finds_photos_per_person_and_reads_label_csvs(tmp_path):
    for path in ("ann/a.jpg", "ann/trip/b.PNG", "bob/c.webp", "bob/notes.txt", "loose.jpg"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"x")
    assert find_photos(tmp_path) == ["ann/a.jpg", "ann/trip/b.PNG", "bob/c.webp"]
    good = tmp_path / "labels.csv"
    good.write_text("file,identity,age\nann/a.jpg,Ann,\nbob/c.webp,Bob,41\n")
    assert read_label_csv(good) == {"ann/a.jpg": {"identity": "Ann"},
                                    "bob/c.webp": {"identity": "Bob", "age": "41"}}
    bad = tmp_path / "bad.csv"
    bad.write_text("path,identity\nann/a.jpg,Ann\n")
    with pytest.raises(SystemExit, match="no `file` column"):
        read_label_csv(bad)


def test_enroll_on_a_hostile_folder(gw, tmp_path):
    """Links out of the folder, a sparse 6 GiB photo, a name with a newline and an escape
    sequence, a key on the command line, and two runs of one folder at once."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-do-not-send\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    tree = tmp_path / "people"
    for name, files in list(people(2).items())[:100]:  # 200 photos: the first run takes a while
        (tree / name).mkdir(parents=True)
        for f in files[:2]:
            shutil.copy(LFW / f, tree / name / f.split("/")[-1])
        shutil.copy(LFW / files[0], outside / f"{name}.jpg")
    first_person = sorted(p.name for p in tree.iterdir())[0]
    (tree / first_person / "shadow.jpg").symlink_to(secret)
    (tree / first_person / "linked").symlink_to(outside)  # a folder link inside a person
    (tree / "zz_linked_person").symlink_to(outside)       # a person folder that is a link
    (tree / "mallory").mkdir()
    with open(tree / "mallory" / "huge.jpg", "wb") as f:
        f.truncate(6 * 1024**3)  # sparse: 6 GiB by its size, nothing on disk
    evil = "evil\n\x1b[31mred.jpg"
    (tree / "mallory" / evil).write_bytes(base64.b64decode(blank_jpeg()))
    real = sorted(p for p in tree.rglob("*.jpg") if not p.is_symlink()
                  and p.parent.name != "mallory")
    assert find_photos(tree) == sorted([*(p.relative_to(tree).as_posix() for p in real),
                                        "mallory/huge.jpg", f"mallory/{evil}"])

    refused = enroll(str(gw.base_url), tree, "--api-key", "a-key-anyone-could-see-in-ps")
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "unrecognized arguments: --api-key" in err, err

    url = str(gw.base_url)
    key_file = tmp_path / "key"  # the gateway has keys off: sent and ignored, but read
    key_file.write_text("enroll-key-0123456789abcdef\n")
    # The gate off: this is about the folder; one of these photos is darker than it takes.
    first = enroll(url, tree, "--concurrency", "1", "--api-key-file", str(key_file),
                   "--quality-gate", "off", store="hostile")
    deadline = time.monotonic() + 60
    while not registry(gw, store="hostile") and time.monotonic() < deadline:
        time.sleep(0.05)  # the first run holds the folder's lock once it registers
    assert first.poll() is None
    second = enroll(url, tree, "--quality-gate", "off", store="hostile")
    out2, err2 = second.communicate(timeout=60)
    out, err = first.communicate(timeout=600)
    assert second.returncode == 1 and "another enrolment" in err2, (out2, err2, out, err)
    assert first.returncode == 1, out + err  # huge.jpg failed
    registered, skipped, no_face, _, failed, total = (
        int(n) for n in SUMMARY.search(out).groups())
    assert (registered, no_face, failed, total) == (len(real), 1, 1, len(real) + 2)
    assert "mallory/huge.jpg: 6442450944 bytes, over --max-bytes" in out
    assert "no face: mallory/evil\\n\\x1b[31mred.jpg" in out  # escaped, not raw
    assert "\x1b" not in out + err and "SECRET" not in out + err
    sources = sorted(r["labels"]["source"] for r in registry(gw, store="hostile"))
    assert sources == [p.relative_to(tree).as_posix() for p in real]  # once each, no links
