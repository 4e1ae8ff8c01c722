"""Every curl example in README.md, read from the README and run as written against a real
gateway on the real pack, in a folder where the README's photo names are real photos.

An example is a ```sh block holding a curl command followed by its response: a ```json
block (200, or the status in an error body's `code`) or a ```text block starting with the
status line. The actual response must have the documented fields, with the documented
types, the same strings and booleans, and the same numbers within NUMBER_TOLERANCE (ids,
times, pids and counters, which differ every run, only by type; a long list of numbers, an
embedding, is shown and compared by its first few).

The documented responses are this test's own output: `make readme-examples`
(FACE_README_WRITE=1) runs the examples and writes each response into README.md.
"""
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess

import httpx
import pytest
from PIL import Image

from bench.service import wait_until_ok
from gateway_support import gateway_process, readme_block, readme_gallery, write_config
from support import FACES, ROOT, free_port, needs_shared

pytestmark = needs_shared

MODEL = "local-pack"  # README's offline pack, on the same files
TRAIN = FACES / "face_recognition" / "examples" / "knn_examples" / "train"
# The README's file names and the real photos they stand for.
PHOTOS = {"sam-1.jpg": TRAIN / "obama" / "obama.jpg",
          "sam-2.jpg": TRAIN / "obama" / "obama2.jpg",
          "alex.jpg": TRAIN / "rose_leslie" / "img1.jpg"}
SH_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)
RESPONSE = re.compile(r"\s*```(json|text)\n(.*?)```", re.DOTALL)
CURL = re.compile(r"(^|\|)\s*curl ", re.MULTILINE)
# What differs between runs of the same request: compared by type only.
VOLATILE = {"id", "person_id", "into", "registered_at", "created_at", "processing_time_ms", "pid", "address", "calls", "in_flight",
            "starts"}
# The same ONNX models on another CPU or onnxruntime build round differently in the last digits.
NUMBER_TOLERANCE = dict(rel_tol=1e-3, abs_tol=1e-3)
SHOWN_NUMBERS = 4  # of a long list of numbers (an embedding)
WIDTH = 92


def readme_examples() -> list[tuple[str, int, str, str, tuple[int, int]]]:
    """(command, expected status, kind, documented response, its span in README) in order."""
    readme, examples = (ROOT / "README.md").read_text(), []
    for block in SH_BLOCK.finditer(readme):
        if not CURL.search(block[1]):
            continue
        answer = RESPONSE.match(readme, block.end())
        assert answer, f"README: no response block after\n{block[1]}"
        kind, response = answer[1], answer[2].strip()
        if kind == "text":
            status = int(response.split()[1])
        else:
            status = json.loads(response).get("error", {}).get("code", 200)
        examples.append((block[1].strip(), status, kind, response, answer.span(2)))
    return examples


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def same_shape(documented, actual, where="response", volatile=False):
    """Fields and types agree; strings, booleans and numbers too, except VOLATILE fields'."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict), where
        assert set(actual) == set(documented), f"{where}: {sorted(actual)} vs {sorted(documented)}"
        for key in documented:
            same_shape(documented[key], actual[key], f"{where}.{key}", key in VOLATILE)
    elif isinstance(documented, list):
        assert isinstance(actual, list) and bool(actual) == bool(documented), where
        if documented and all(map(is_number, documented)):  # shown by its first numbers
            assert len(documented) == min(len(actual), SHOWN_NUMBERS), where
        else:
            assert len(actual) == len(documented), where
        for i, (doc, act) in enumerate(zip(documented, actual)):
            same_shape(doc, act, f"{where}[{i}]", volatile)
    elif is_number(documented):
        assert is_number(actual), where
        assert volatile or math.isclose(actual, documented, **NUMBER_TOLERANCE), \
            f"{where}: {actual} vs documented {documented}"
    else:
        assert type(actual) is type(documented), where
        assert volatile or actual == documented, f"{where}: {actual!r} vs {documented!r}"


def shown(value):
    """The response as README shows it: a long list of numbers cut to its first few."""
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > SHOWN_NUMBERS and all(map(is_number, value)):
            return value[:SHOWN_NUMBERS]
        return [shown(v) for v in value]
    return value


def as_readme_json(value) -> str:
    """Compact JSON, wrapped at WIDTH after a ", " outside strings (continuations indented)."""
    text, pieces, start, in_string, escaped = json.dumps(value), [], 0, False, False
    for i, char in enumerate(text):
        if in_string:
            in_string, escaped = (escaped or char != '"'), (not escaped and char == "\\")
        elif char == '"':
            in_string = True
        elif text.startswith(", ", i):
            pieces.append(text[start:i + 1])
            start = i + 2
    pieces.append(text[start:])
    lines = [pieces[0]]
    for piece in pieces[1:]:
        if len(lines[-1]) + 1 + len(piece) <= WIDTH:
            lines[-1] += " " + piece
        else:
            lines.append(" " + piece)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The folder the examples run in: the photos, and a curlrc that adds the status line."""
    folder = tmp_path_factory.mktemp("readme")
    for name, photo in PHOTOS.items():
        shutil.copy(photo, folder / name)
    out = io.BytesIO()
    Image.linear_gradient("L").resize((320, 240)).convert("RGB").save(out, "JPEG")
    (folder / "landscape.jpg").write_bytes(out.getvalue())  # a photo with no face in it
    (folder / ".curlrc").write_text('write-out = "\\n%{http_code}"\n')
    return folder


def test_every_curl_in_the_readme_is_an_example():
    readme = (ROOT / "README.md").read_text()
    assert "insightface-opencv" not in " ".join(doc for *_, doc, _ in readme_examples())
    assert readme.count("curl ") == sum(c.count("curl ") for c, *_ in readme_examples())
    routes = " ".join(command for command, *_ in readme_examples())
    for route in ("verify", "analyze", "embed", "detection", "register", "identify", "forget",
                  "registry", "people"):
        assert f"/{route}" in routes


def test_readme_examples_run_as_documented(tmp_path_factory, workdir):
    models = tmp_path_factory.mktemp("models")
    write_config(models, MODEL)
    env = {**os.environ, "CURL_HOME": str(workdir), "FACE_MODEL": MODEL}
    rewrite = os.environ.get("FACE_README_WRITE") == "1"
    written = []
    with gateway_process(models, tmp_path_factory.mktemp("data"),
                         "--default-model", MODEL) as (_, url):
        env["FACE_URL"] = url
        for command, status, kind, documented, span in readme_examples():
            run = subprocess.run(["bash", "-c", command], cwd=workdir, env=env,
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, f"{command}\n{run.stderr}"
            body, _, code = run.stdout.rpartition("\n")
            assert int(code) == status, f"{command}\n{run.stdout}"
            if kind == "json":
                actual = json.loads(body)
                if rewrite:
                    written.append((span, as_readme_json(shown(actual))))
                else:
                    same_shape(json.loads(documented), actual)
                if "registered_at" in actual:  # later examples name the registered person
                    env["FACE_ID"], env["FACE_PERSON"] = actual["id"], actual["person_id"]
    if rewrite:  # from the end, so that the earlier spans stay where they are
        readme = (ROOT / "README.md").read_text()
        for (start, end), text in sorted(written, reverse=True):
            readme = readme[:start] + text + "\n" + readme[end:]
        (ROOT / "README.md").write_text(readme)


def test_readme_custom_gallery_installs_and_serves_with_its_one_command(tmp_path, workdir):
    """The README's gallery, beside the real files of ../shared/models, and its `make run`."""
    readme_gallery(tmp_path / "face-weights")
    command = readme_block("sh", "make run MODEL=local-pack").strip()
    port = free_port()
    # Run from a folder of its own (models/ and data/ land there), with this checkout's venv.
    make = subprocess.Popen(
        ["bash", "-c", f"{command} -f {ROOT}/Makefile VENV={ROOT}/.venv PORT={port}"],
        cwd=tmp_path, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ok(url, "/healthz", make, timeout=120)
        files = {"img1": (workdir / "sam-1.jpg").read_bytes(),
                 "img2": (workdir / "sam-2.jpg").read_bytes()}
        verdict = httpx.post(f"{url}/v1/face/verify", files=files, timeout=120).json()
        assert verdict["verified"] is True and verdict["model"] == "local-pack", verdict
        assert verdict["threshold"] == 0.74
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(timeout=60)
    assert (tmp_path / "models" / "local-pack.yaml").is_file()
