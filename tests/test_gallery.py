"""Model gallery and installer: the built-in index, installs from custom galleries
(file:// and a local HTTP server), checks, resume, licences, packs, removal, and
installed configs loaded into a real backend."""
import contextlib
import csv
import hashlib
import http.server
import io
import os
import pathlib
import re
import sys
import threading
import zipfile

import pytest
import yaml

from gallery import DEFAULT_MODEL
from gallery.__main__ import main
from gallery.configs import load_model_configs, read_config
from gallery.download import DownloadError, Progress, fetch, sha256_of
from gallery.index import BUILTIN_INDEX, load_galleries, read_gallery
from support import FACES, MODELS, SHARED, backend_process, image_b64, needs_shared, stub_for

LIVENESS_OPTIONS = ["antispoof_v2_onnx:MiniFASNetV2.onnx", "antispoof_v1se_onnx:MiniFASNetV1SE.onnx"]
REAL_FILES = ["det_500m.onnx", "MobileFaceNet.onnx", "genderage.onnx", "MiniFASNetV2.onnx", "MiniFASNetV1SE.onnx"]


# ---------------------------------------------------------------- helpers

def manifest() -> dict[str, dict]:
    """../shared/models/MANIFEST.tsv rows by file name, with the file's absolute path."""
    with open(MODELS / "MANIFEST.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {pathlib.Path(r["file"]).name: {**r, "path": SHARED / r["file"]} for r in rows}


def real_file(name: str) -> dict:
    row = manifest()[name]
    return {"filename": name, "sha256": row["sha256"], "uri": row["path"].as_uri(),
            "size": int(row["size_bytes"])}


def real_test_entry() -> dict:
    """The complete real pack from ../shared/models as a gallery entry with file:// URIs."""
    return entry("test-real", [real_file(n) for n in REAL_FILES],
                 ["engine:insightface", "detector_onnx:det_500m.onnx", "recognizer_onnx:MobileFaceNet.onnx",
                  "genderage_onnx:genderage.onnx", *LIVENESS_OPTIONS, "verify_threshold:0.74"])


def random_file(folder: pathlib.Path, name: str, size: int = 300_000) -> dict:
    """A file of random bytes and its gallery file entry (file:// URI)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    (folder / name).write_bytes(data)
    return {"filename": name, "sha256": hashlib.sha256(data).hexdigest(), "uri": (folder / name).as_uri()}


def entry(name: str, files: list[dict], options=(), **extra) -> dict:
    return {"name": name, "description": f"test entry {name}", "license": extra.pop("license", "MIT"),
            "tags": extra.pop("tags", ["test"]),
            "overrides": {"backend": "insightface", "options": list(options),
                          "parameters": {"model": name}},
            "files": files, **extra}


def write_gallery(path: pathlib.Path, entries: list[dict]) -> pathlib.Path:
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def installed_names(models_dir: pathlib.Path) -> set[str]:
    return set(load_model_configs(models_dir)) if models_dir.is_dir() else set()


@contextlib.contextmanager
def range_server(root: pathlib.Path, drop_first_after: int | None = None):
    """HTTP server on 127.0.0.1 serving `root` with Range support.

    With drop_first_after, the first response announces the whole body but the
    connection closes after that many bytes. Yields (base URL, log of Range headers).
    """
    log: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            requested = self.headers.get("Range")
            log.append(requested)
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1)) if requested else 0
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206 if requested else 200)
            if requested:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if drop_first_after is not None and len(log) == 1:
                self.wfile.write(body[:drop_first_after])
                self.close_connection = True  # HTTP/1.0 closes: the client sees a short body
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", log
    finally:
        server.shutdown()
        server.server_close()


def make_zip(path: pathlib.Path, files: dict[str, pathlib.Path], folder: str | None) -> dict:
    """A zip of `files` (name -> source), at the top or inside `folder`; its gallery file entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        if folder:
            zf.writestr(f"{folder}/", b"")
        for name, source in files.items():
            zf.write(source, f"{folder}/{name}" if folder else name)
    path.write_bytes(buffer.getvalue())
    return {"filename": path.name, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
            "uri": path.as_uri()}


# ---------------------------------------------------------------- the built-in index

def gallery_md_tables() -> tuple[list[dict], dict[str, dict]]:
    """GALLERY.md's liveness table and its entry table (continuation rows merged into their entry)."""
    liveness, entries, current = [], {}, None
    for line in (SHARED / "spec" / "GALLERY.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        separator = all(re.fullmatch(r"-+", c) for c in cells)
        if not line.startswith("|") or separator or cells[0] in ("file", "entry"):
            continue
        if len(cells) == 3:
            liveness.append({"filename": cells[0], "sha256": cells[1], "uri": cells[2]})
        elif len(cells) == 6:
            if cells[0]:
                current = entries[cells[0]] = {"options": cells[1], "licence": cells[5], "files": []}
            current["files"].append({"filename": cells[2].split()[0], "sha256": cells[3], "uri": cells[4]})
    return liveness, entries


@needs_shared
def test_builtin_index_has_every_gallery_md_entry_with_exact_urls_and_hashes():
    liveness, expected = gallery_md_tables()
    assert len(liveness) == 2 and len(expected) == 7
    built_in = {e.name: e for e in read_gallery(str(BUILTIN_INDEX))}
    assert set(built_in) == set(expected)
    for name, row in expected.items():
        entry_ = built_in[name]
        files = [{"filename": f.filename, "sha256": f.sha256, "uri": f.uri} for f in entry_.files]
        assert files == row["files"] + liveness, name
        if row["options"].startswith("same"):  # the int8 entry: the opencv options on its own files
            table_options = ["engine:onnx_direct", f"detector_onnx:{row['files'][0]['filename']}",
                             f"recognizer_onnx:{row['files'][1]['filename']}"]
        else:
            table_options = [o.strip() for o in row["options"].split(",")]
        assert list(entry_.options) == table_options + LIVENESS_OPTIONS, name
        assert entry_.research_only == ("non-commercial" in row["licence"]), name


def test_builtin_entries_have_backend_model_and_a_commercial_safe_default():
    entries = {e.name: e for e in read_gallery(str(BUILTIN_INDEX))}
    for e in entries.values():
        assert e.backend == "insightface"
        assert e.license
        if e.name.startswith("insightface-opencv"):
            detector = dict(o.split(":", 1) for o in e.options)["detector_onnx"]
            assert e.model == detector == e.files[0].filename
        else:
            assert e.model == e.name and e.files[0].pack == e.options[1].split(":")[1]
    int8 = dict(o.split(":", 1) for o in entries["insightface-opencv-int8"].options)
    assert int8["detector_onnx"].endswith("_int8.onnx") and int8["recognizer_onnx"].endswith("_int8.onnx")
    assert DEFAULT_MODEL == "insightface-opencv" and not entries[DEFAULT_MODEL].research_only
    # sha256 values are quoted strings in the file itself, as the convention says
    assert not re.search(r"sha256: [0-9a-f]", BUILTIN_INDEX.read_text())


# ---------------------------------------------------------------- installing

@needs_shared
def test_install_from_file_urls_writes_localai_config_last_and_verifies(tmp_path, capsys):
    gallery = write_gallery(tmp_path / "g.yaml", [real_test_entry()])
    models = tmp_path / "models"
    rc, _, err = cli(capsys, "install", "test-real", "--gallery", gallery, "--models-dir", models)
    assert rc == 0, err
    doc = yaml.safe_load((models / "test-real.yaml").read_text())
    assert doc["name"] == "test-real" and doc["backend"] == "insightface"
    assert doc["parameters"] == {"model": "test-real"}
    assert "detector_onnx:det_500m.onnx" in doc["options"]
    assert [f["filename"] for f in doc["files"]] == REAL_FILES
    rows = manifest()
    for f in doc["files"]:
        assert f["sha256"] == rows[f["filename"]]["sha256"]
        assert hashlib.sha256((models / f["filename"]).read_bytes()).hexdigest() == f["sha256"]
    assert not list(models.glob("*.part")) and not list(models.glob(".*"))
    config = read_config(models / "test-real.yaml")
    assert config.option("verify_threshold") == "0.74" and config.license == "MIT"

    rc, out, _ = cli(capsys, "list", "--models-dir", models, "--gallery", gallery)
    assert rc == 0 and re.search(r"^  test-real +MIT +installed$", out, re.M)
    rc, out, _ = cli(capsys, "verify", "test-real", "--models-dir", models)
    assert rc == 0 and out.count(": ok") == len(REAL_FILES)


def test_sha_mismatch_fails_naming_file_and_both_hashes_and_installs_nothing(tmp_path, capsys):
    good = random_file(tmp_path / "src", "good.onnx")
    bad = random_file(tmp_path / "src", "bad.onnx")
    claimed = "0" * 64
    gallery = write_gallery(tmp_path / "g.yaml", [entry("broken", [good, {**bad, "sha256": claimed}])])
    models = tmp_path / "models"
    rc, _, err = cli(capsys, "install", "broken", "--gallery", gallery, "--models-dir", models)
    assert rc == 1
    assert "bad.onnx" in err and claimed in err and bad["sha256"] in err
    assert "Traceback" not in err and len(err.strip().splitlines()[-1]) > 0
    assert installed_names(models) == set()
    assert not (models / "bad.onnx").exists() and not (models / "bad.onnx.part").exists()
    rc, out, _ = cli(capsys, "list", "--gallery", gallery, "--models-dir", models)
    assert re.search(r"^  broken +MIT +partly installed: 1 of 2 files; install again to finish$",
                     out, re.M) and "none" in out


def test_size_mismatch_fails_before_the_file_is_used(tmp_path, capsys):
    file = random_file(tmp_path / "src", "w.onnx", size=1000)
    gallery = write_gallery(tmp_path / "g.yaml", [entry("sized", [{**file, "size": 999}])])
    rc, _, err = cli(capsys, "install", "sized", "--gallery", gallery, "--models-dir", tmp_path / "m")
    assert rc == 1 and "w.onnx" in err and "999" in err and "1000" in err
    assert not (tmp_path / "m" / "w.onnx").exists()


def test_interrupted_download_resumes_with_a_range_request(tmp_path, capsys):
    served = tmp_path / "www"
    file = random_file(served, "weights.onnx", size=2_000_000)
    with range_server(served, drop_first_after=700_000) as (base, log):
        gallery = write_gallery(tmp_path / "g.yaml", [entry("http-model", [
            {**file, "uri": f"{base}/weights.onnx", "size": 2_000_000}])])
        rc, _, err = cli(capsys, "install", "http-model", "--gallery", gallery, "--models-dir", tmp_path / "m")
    assert rc == 0, err
    assert log == [None, "bytes=700000-"]
    assert "resuming" in err
    assert (tmp_path / "m" / "weights.onnx").read_bytes() == (served / "weights.onnx").read_bytes()
    assert installed_names(tmp_path / "m") == {"http-model"}


def test_partial_download_left_by_a_failed_run_resumes_in_the_next(tmp_path):
    served = tmp_path / "www"
    file = random_file(served, "weights.onnx", size=1_000_000)
    dest = tmp_path / "m" / "weights.onnx"
    dest.parent.mkdir()
    with range_server(served, drop_first_after=400_000) as (base, log):
        with pytest.raises(DownloadError, match="weights.onnx"):
            fetch(f"{base}/weights.onnx", dest, file["sha256"], attempts=1)
        assert not dest.exists() and dest.with_name("weights.onnx.part").stat().st_size == 400_000
        fetch(f"{base}/weights.onnx", dest, file["sha256"], attempts=1)
    assert log == [None, "bytes=400000-"]
    assert dest.read_bytes() == (served / "weights.onnx").read_bytes()
    assert not dest.with_name("weights.onnx.part").exists()


def test_stale_partial_longer_than_the_file_is_replaced(tmp_path):
    served = tmp_path / "www"
    file = random_file(served, "weights.onnx", size=1000)
    dest = tmp_path / "weights.onnx"
    dest.with_name("weights.onnx.part").write_bytes(os.urandom(5000))
    with range_server(served) as (base, log):
        fetch(f"{base}/weights.onnx", dest, file["sha256"])
    assert log == ["bytes=5000-", None]
    assert dest.read_bytes() == (served / "weights.onnx").read_bytes()


def test_progress_bar_is_drawn_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr("sys.stderr", Terminal())
    bar = Progress("w.onnx", total=2_000_000)
    bar.advance(1_000_000)
    bar.close()
    drawn = sys.stderr.getvalue()
    assert drawn.startswith("\r") and drawn.endswith("\n")
    assert "w.onnx [###############...............]  50% 1.0/2.0 MB" in drawn


def test_research_only_entry_needs_accepted_licence_before_any_download(tmp_path, capsys, monkeypatch):
    served = tmp_path / "www"
    file = random_file(served, "research.onnx")
    models = tmp_path / "m"
    with range_server(served) as (base, log):
        gallery = write_gallery(tmp_path / "g.yaml", [entry(
            "research", [{**file, "uri": f"{base}/research.onnx"}],
            license="insightface-non-commercial", tags=["research-only"])])
        rc, _, err = cli(capsys, "install", "research", "--gallery", gallery, "--models-dir", models)
        assert rc == 1
        assert "insightface-non-commercial" in err and "non-commercial research only" in err
        assert "--accept-license" in err and "FACE_MODELS_ACCEPT_LICENSE" in err
        assert log == [] and installed_names(models) == set()

        rc, _, err = cli(capsys, "--accept-license", "install", "research", "--gallery", gallery,
                         "--models-dir", models)
        assert rc == 0, err
        assert log == [None]
        cli(capsys, "remove", "research", "--models-dir", models)
        monkeypatch.setenv("FACE_MODELS_ACCEPT_LICENSE", "1")
        rc, _, err = cli(capsys, "install", "research", "--gallery", gallery, "--models-dir", models)
        assert rc == 0, err
        assert installed_names(models) == {"research"}


def test_builtin_research_pack_is_refused_with_its_licence(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FACE_MODELS_ACCEPT_LICENSE", raising=False)
    rc, _, err = cli(capsys, "install", "insightface-buffalo-s", "--models-dir", tmp_path / "m")
    assert rc == 1 and "insightface-non-commercial" in err and "--accept-license" in err
    assert "download" not in err and "buffalo_s.zip" not in err


@pytest.mark.parametrize("folder", [None, "testpack"], ids=["flat", "nested"])
def test_zip_pack_unpacks_flat_into_its_folder(tmp_path, capsys, folder):
    sources = {n: tmp_path / "src" / n for n in ("a.onnx", "b.onnx")}
    for f in sources.values():
        random_file(f.parent, f.name)
    pack = make_zip(tmp_path / "testpack.zip", sources, folder)
    gallery = write_gallery(tmp_path / "g.yaml", [entry("packed", [pack], ["model_pack:testpack"])])
    models = tmp_path / "m"
    rc, _, err = cli(capsys, "install", "packed", "--gallery", gallery, "--models-dir", models)
    assert rc == 0, err
    assert sorted(p.name for p in (models / "testpack").iterdir()) == ["a.onnx", "b.onnx"]
    for name, source in sources.items():
        assert (models / "testpack" / name).read_bytes() == source.read_bytes()
    assert not (models / "testpack.zip").exists()
    config = load_model_configs(models)["packed"]
    assert config.files == ["testpack/a.onnx", "testpack/b.onnx"]
    rc, out, _ = cli(capsys, "verify", "packed", "--models-dir", models)
    assert rc == 0 and "testpack/a.onnx: ok" in out

    rc, _, _ = cli(capsys, "remove", "packed", "--models-dir", models)
    assert rc == 0 and not (models / "testpack").exists() and installed_names(models) == set()


def test_shared_files_stay_until_no_installed_model_uses_them(tmp_path, capsys):
    src = tmp_path / "src"
    shared = [random_file(src, "MiniFASNetV2.onnx"), random_file(src, "MiniFASNetV1SE.onnx")]
    gallery = write_gallery(tmp_path / "g.yaml", [
        entry("one", [random_file(src, "one.onnx"), *shared], LIVENESS_OPTIONS),
        entry("two", [random_file(src, "two.onnx"), *shared], LIVENESS_OPTIONS),
    ])
    models = tmp_path / "m"
    for name in ("one", "two"):
        assert cli(capsys, "install", name, "--gallery", gallery, "--models-dir", models)[0] == 0

    rc, out, _ = cli(capsys, "remove", "one", "--models-dir", models)
    assert rc == 0 and "kept MiniFASNetV2.onnx" in out
    assert not (models / "one.onnx").exists() and (models / "MiniFASNetV2.onnx").exists()
    assert installed_names(models) == {"two"}
    assert cli(capsys, "verify", "two", "--models-dir", models)[0] == 0

    assert cli(capsys, "remove", "two", "--models-dir", models)[0] == 0
    assert sorted(p.name for p in models.iterdir()) == []


def test_hand_written_config_keeps_the_files_its_options_name(tmp_path, capsys):
    src = tmp_path / "src"
    gallery = write_gallery(tmp_path / "g.yaml", [
        entry("installed", [random_file(src, "det.onnx"), random_file(src, "MiniFASNetV2.onnx")])])
    models = tmp_path / "m"
    assert cli(capsys, "install", "installed", "--gallery", gallery, "--models-dir", models)[0] == 0
    (models / "mine.yml").write_text(yaml.safe_dump({
        "name": "mine", "backend": "insightface", "parameters": {"model": "my_det.onnx"},
        "options": ["engine:insightface", "detector_onnx:det.onnx", "antispoof_v2_onnx:MiniFASNetV2.onnx"]}))
    rc, out, _ = cli(capsys, "list", "--models-dir", models)
    assert rc == 0 and re.search(r"^  mine +licence unknown$", out, re.M)

    assert cli(capsys, "remove", "installed", "--models-dir", models)[0] == 0
    assert (models / "det.onnx").exists() and (models / "MiniFASNetV2.onnx").exists()
    assert installed_names(models) == {"mine"}


def test_verify_reports_a_changed_file(tmp_path, capsys):
    gallery = write_gallery(tmp_path / "g.yaml", [entry("m1", [random_file(tmp_path / "src", "w.onnx")])])
    models = tmp_path / "m"
    assert cli(capsys, "install", "m1", "--gallery", gallery, "--models-dir", models)[0] == 0
    (models / "w.onnx").write_bytes(b"tampered")
    rc, _, err = cli(capsys, "verify", "m1", "--models-dir", models)
    assert rc == 1 and "w.onnx" in err and hashlib.sha256(b"tampered").hexdigest() in err
    # install repairs it: the damaged file is fetched again
    assert cli(capsys, "install", "m1", "--gallery", gallery, "--models-dir", models)[0] == 0
    assert cli(capsys, "verify", "m1", "--models-dir", models)[0] == 0


def test_different_file_under_a_shared_name_goes_into_the_models_own_folder(tmp_path, capsys):
    """README's offline pack and a built-in model both name MiniFASNetV2.onnx, with other
    bytes: both install, each keeps its own, and removing one leaves the other whole."""
    first, second = random_file(tmp_path / "a", "MiniFASNetV2.onnx"), random_file(
        tmp_path / "b", "MiniFASNetV2.onnx")
    options = ["engine:insightface", "antispoof_v2_onnx:MiniFASNetV2.onnx"]
    gallery = write_gallery(tmp_path / "g.yaml", [entry("first", [first], options),
                                                  entry("second", [second], options)])
    models = tmp_path / "m"
    assert cli(capsys, "install", "first", "--gallery", gallery, "--models-dir", models)[0] == 0
    rc, _, err = cli(capsys, "install", "second", "--gallery", gallery, "--models-dir", models)
    assert rc == 0, err
    configs = load_model_configs(models)
    assert configs["second"].files == ["second/MiniFASNetV2.onnx"]
    assert configs["second"].option("antispoof_v2_onnx") == "second/MiniFASNetV2.onnx"
    assert (tmp_path / "b" / "MiniFASNetV2.onnx").read_bytes() == (
        models / "second" / "MiniFASNetV2.onnx").read_bytes()
    assert (tmp_path / "a" / "MiniFASNetV2.onnx").read_bytes() == (
        models / "MiniFASNetV2.onnx").read_bytes()
    # installing again keeps it where it is
    assert cli(capsys, "install", "second", "--gallery", gallery, "--models-dir", models)[0] == 0
    for name in ("first", "second"):
        assert cli(capsys, "verify", name, "--models-dir", models)[0] == 0
    assert cli(capsys, "remove", "second", "--models-dir", models)[0] == 0
    assert not (models / "second").exists()
    assert cli(capsys, "verify", "first", "--models-dir", models)[0] == 0


def test_list_counts_only_files_with_the_gallerys_bytes(tmp_path, capsys):
    good, other = random_file(tmp_path / "src", "a.onnx"), random_file(tmp_path / "src", "b.onnx")
    gallery = write_gallery(tmp_path / "g.yaml", [entry("half", [good, other])])
    models = tmp_path / "m"
    models.mkdir()
    (models / "a.onnx").write_bytes((tmp_path / "src" / "a.onnx").read_bytes())
    (models / "b.onnx").write_bytes(b"same name, other bytes")  # e.g. another model's file
    rc, out, _ = cli(capsys, "list", "--gallery", gallery, "--models-dir", models)
    assert rc == 0 and re.search(r"^  half +MIT +partly installed: 1 of 2 files", out, re.M)


def test_mirror_supplies_files_by_name_and_is_checked(tmp_path, capsys, monkeypatch):
    mirror = tmp_path / "mirror"
    file = random_file(mirror, "w.onnx")
    fallback = random_file(tmp_path / "elsewhere", "other.onnx")  # not in the mirror: its URI is used
    unreachable = "http://127.0.0.1:9/w.onnx"  # discard port: nothing listens there
    gallery = write_gallery(tmp_path / "g.yaml", [entry("mirrored", [{**file, "uri": unreachable}, fallback])])
    models = tmp_path / "m"
    rc, _, err = cli(capsys, "install", "mirrored", "--mirror", mirror, "--gallery", gallery,
                     "--models-dir", models)
    assert rc == 0, err
    assert (models / "w.onnx").read_bytes() == (mirror / "w.onnx").read_bytes()
    assert (models / "other.onnx").exists()

    (mirror / "w.onnx").write_bytes(b"not the weights")
    monkeypatch.setenv("FACE_MODELS_MIRROR", str(mirror))
    rc, _, err = cli(capsys, "install", "mirrored", "--gallery", gallery, "--models-dir", tmp_path / "m2")
    assert rc == 1 and "w.onnx" in err and file["sha256"] in err
    assert installed_names(tmp_path / "m2") == set()


def test_ensure_installs_once_and_offline_names_mirror_and_gallery(tmp_path, capsys):
    source = tmp_path / "src"
    gallery = write_gallery(tmp_path / "g.yaml", [
        entry("local", [random_file(source, "w.onnx")]),
        entry("remote", [{**random_file(source, "r.onnx"), "uri": "http://127.0.0.1:9/r.onnx"}])])
    models = tmp_path / "m"
    rc, out, err = cli(capsys, "ensure", "local", "--gallery", gallery, "--models-dir", models)
    assert rc == 0 and "copying" in err and out == f"local: installed in {models}\n"
    (source / "w.onnx").unlink()  # a second fetch would now fail
    rc, out, err = cli(capsys, "ensure", "local", "--gallery", gallery, "--models-dir", models)
    assert rc == 0 and out == f"local: already installed in {models}\n" and err == ""

    rc, _, err = cli(capsys, "ensure", "remote", "--gallery", gallery, "--models-dir", models)
    assert rc == 1
    assert "--mirror" in err and "FACE_MODELS_MIRROR" in err and "--gallery" in err
    assert installed_names(models) == {"local"}


def test_custom_galleries_come_first_in_the_order_given(tmp_path, capsys):
    first = write_gallery(tmp_path / "first.yaml", [entry(DEFAULT_MODEL, [random_file(tmp_path / "a", "x.onnx")])])
    second = write_gallery(tmp_path / "second.yaml", [entry(DEFAULT_MODEL, [random_file(tmp_path / "b", "y.onnx")])])
    entries = {e.name: e for e in load_galleries([str(first), str(second)])}
    assert entries[DEFAULT_MODEL].source == str(first)
    assert "insightface-buffalo-l" in entries  # the built-in index is still searched
    rc, _, err = cli(capsys, "--gallery", first.as_uri(), "install", DEFAULT_MODEL,
                     "--gallery", second, "--models-dir", tmp_path / "m")
    assert rc == 0, err
    assert load_model_configs(tmp_path / "m")[DEFAULT_MODEL].files == ["x.onnx"]
    rc, out, _ = cli(capsys, "ensure", "--models-dir", tmp_path / "m")  # no name: the default model
    assert rc == 0 and out == f"{DEFAULT_MODEL}: already installed in {tmp_path / 'm'}\n"


def test_gallery_served_over_http(tmp_path, capsys):
    served = tmp_path / "www"
    file = random_file(served, "w.onnx")
    with range_server(served) as (base, _):
        write_gallery(served / "index.yaml", [entry("web", [{**file, "uri": f"{base}/w.onnx"}])])
        rc, _, err = cli(capsys, "install", "web", "--gallery", f"{base}/index.yaml", "--models-dir", tmp_path / "m")
    assert rc == 0, err
    assert installed_names(tmp_path / "m") == {"web"}


def test_usage_errors_exit_2_and_failures_exit_1(tmp_path, capsys):
    for argv in (["frobnicate"], ["install"], ["list", "extra"], ["--no-such-option", "list"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
    rc, _, err = cli(capsys, "remove", "absent", "--models-dir", tmp_path)
    assert rc == 1 and err.strip() == f"face-models: absent is not installed in {tmp_path}"
    rc, _, err = cli(capsys, "install", "no-such-model", "--models-dir", tmp_path)
    assert rc == 1 and "no gallery entry named 'no-such-model'" in err
    bad = write_gallery(tmp_path / "bad.yaml", [{"name": "../escape", "files": []}])
    rc, _, err = cli(capsys, "list", "--gallery", bad)
    assert rc == 1 and "'../escape'" in err


# ---------------------------------------------------------------- installed models in a real backend

@pytest.fixture(scope="module")
def backend_stub():
    with backend_process() as (_, addr):
        stub, channel = stub_for(addr)
        yield stub
        channel.close()


def first_same_pair() -> tuple[pathlib.Path, pathlib.Path]:
    with open(FACES / "lfw_grey" / "pairs.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["same"] == "1")
    return FACES / "lfw_grey" / row["file1"], FACES / "lfw_grey" / row["file2"]


def verify_pair_with(stub, config, models_dir: pathlib.Path):
    from face_contract.rpc import backend_pb2 as pb
    result = stub.LoadModel(pb.ModelOptions(Model=config.name, ModelPath=str(models_dir),
                                            Options=config.options), timeout=120)
    assert result.success, result.message
    img1, img2 = first_same_pair()
    return stub.FaceVerify(pb.FaceVerifyRequest(img1=image_b64(img1), img2=image_b64(img2)), timeout=60)


@needs_shared
def test_installed_config_loads_into_the_backend_and_verifies_a_same_person_pair(tmp_path, capsys, backend_stub):
    gallery = write_gallery(tmp_path / "g.yaml", [real_test_entry()])
    models = tmp_path / "models"
    assert cli(capsys, "install", "test-real", "--gallery", gallery, "--models-dir", models)[0] == 0
    reply = verify_pair_with(backend_stub, load_model_configs(models)["test-real"], models)
    assert reply.verified and reply.model == "test-real"
    assert reply.threshold == pytest.approx(0.74)


@needs_shared
@pytest.mark.parametrize("folder", [None, "testpack"], ids=["flat", "nested"])
def test_installed_zip_pack_loads_into_the_backend(tmp_path, capsys, backend_stub, folder):
    pack = make_zip(tmp_path / "testpack.zip",
                    {n: manifest()[n]["path"] for n in ("det_500m.onnx", "MobileFaceNet.onnx", "genderage.onnx")},
                    folder)
    gallery = write_gallery(tmp_path / "g.yaml", [entry(
        "test-pack", [pack, real_file("MiniFASNetV2.onnx"), real_file("MiniFASNetV1SE.onnx")],
        ["engine:insightface", "model_pack:testpack", *LIVENESS_OPTIONS, "verify_threshold:0.74"])])
    models = tmp_path / "models"
    assert cli(capsys, "install", "test-pack", "--gallery", gallery, "--models-dir", models)[0] == 0
    assert sorted(p.name for p in (models / "testpack").iterdir()) == [
        "MobileFaceNet.onnx", "det_500m.onnx", "genderage.onnx"]
    reply = verify_pair_with(backend_stub, load_model_configs(models)["test-pack"], models)
    assert reply.verified and reply.model == "test-pack"


# ---------------------------------------------------------------- offline set-up

def test_mirror_is_searched_recursively_by_name_then_by_sha256(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    deep = random_file(mirror / "a" / "b", "deep.onnx")
    renamed = random_file(tmp_path / "src", "wanted.onnx")
    (mirror / "c").mkdir()
    (tmp_path / "src" / "wanted.onnx").rename(mirror / "c" / "download-1234.bin")
    unreachable = "http://127.0.0.1:9/"
    gallery = write_gallery(tmp_path / "g.yaml", [entry("mirrored", [
        {**deep, "uri": unreachable + "deep.onnx"}, {**renamed, "uri": unreachable + "wanted.onnx"}])])
    rc, _, err = cli(capsys, "install", "mirrored", "--mirror", mirror, "--gallery", gallery,
                     "--models-dir", tmp_path / "m")
    assert rc == 0, err
    assert sha256_of(tmp_path / "m" / "wanted.onnx") == renamed["sha256"]


def test_a_file_missing_from_the_mirror_says_where_it_looked(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    random_file(mirror / "sub", "w.onnx")  # the right name, other bytes
    wanted = random_file(tmp_path / "src", "w.onnx")
    gallery = write_gallery(tmp_path / "g.yaml", [
        entry("offline", [{**wanted, "uri": "http://127.0.0.1:9/w.onnx"}])])
    rc, _, err = cli(capsys, "install", "offline", "--mirror", mirror, "--gallery", gallery,
                     "--models-dir", tmp_path / "m")
    assert rc == 1
    assert f"not in the mirror {mirror} either (1 files searched recursively" in err
    assert wanted["sha256"] in err and f"found {mirror / 'sub' / 'w.onnx'} with SHA-256" in err


def test_relative_file_urls_are_relative_to_the_gallery_file(tmp_path, capsys):
    folder = tmp_path / "weights"
    one = random_file(folder / "det", "one.onnx")
    two = random_file(folder, "two.onnx")
    gallery = write_gallery(folder / "gallery.yaml", [entry("relative", [
        {**one, "uri": "file:det/one.onnx"}, {**two, "uri": "file://./two.onnx"}])])
    rc, _, err = cli(capsys, "install", "relative", "--gallery", gallery.as_uri(),
                     "--models-dir", tmp_path / "m")
    assert rc == 0, err
    assert installed_names(tmp_path / "m") == {"relative"}


def test_a_404_says_not_found_at_the_url_without_the_offline_hint(tmp_path, capsys):
    served = tmp_path / "www"
    file = random_file(tmp_path / "src", "w.onnx")
    served.mkdir()
    with range_server(served) as (base, _):
        gallery = write_gallery(tmp_path / "g.yaml", [entry("gone", [{**file, "uri": f"{base}/w.onnx"}])])
        rc, _, err = cli(capsys, "install", "gone", "--gallery", gallery, "--models-dir", tmp_path / "m")
    assert rc == 1
    assert f"w.onnx: not found at {base}/w.onnx (HTTP 404)" in err and "--mirror" not in err


def test_list_shows_partly_downloaded_files(tmp_path, capsys):
    file = random_file(tmp_path / "src", "w.onnx")
    gallery = write_gallery(tmp_path / "g.yaml", [entry("half", [file])])
    models = tmp_path / "m"
    models.mkdir()
    (models / "w.onnx.part").write_bytes(b"x" * 1234)
    rc, out, _ = cli(capsys, "list", "--gallery", gallery, "--models-dir", models)
    assert rc == 0
    assert re.search(r"^  half +MIT +partly installed: 0 of 1 files, 1 partly downloaded", out, re.M)
    assert re.search(r"^  w\.onnx\.part +1234 bytes$", out, re.M)
