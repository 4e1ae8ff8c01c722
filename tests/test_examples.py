"""examples/: the plain gRPC client run against a real backend, and the LocalAI model YAMLs."""
import shutil
import subprocess
import sys

import pytest
import yaml

from gallery.index import BUILTIN_INDEX, read_gallery
from gateway_support import link_real_files
from support import FACES, ROOT, backend_process, needs_shared

EXAMPLES = ROOT / "examples"
LOCALAI_MODELS = sorted((EXAMPLES / "localai" / "models").glob("*.yaml"))
OBAMA = FACES / "face_recognition" / "examples" / "knn_examples" / "train" / "obama"


@needs_shared
def test_grpc_client_verifies_two_photos_on_a_real_backend(tmp_path):
    config = EXAMPLES / "localai" / "models" / "local-pack.yaml"
    shutil.copy(config, tmp_path / config.name)
    options = yaml.safe_load(config.read_text())["options"]
    link_real_files(tmp_path, [o.split(":", 1)[1] for o in options if o.endswith(".onnx")])
    (tmp_path / "empty").mkdir()
    shutil.copy(config, tmp_path / "empty" / config.name)  # the YAML without its files
    with backend_process() as (_, address):
        # as README runs it: a path relative to the caller's directory, not the backend's
        run = subprocess.run(
            [sys.executable, EXAMPLES / "grpc_client.py", address, config.name,
             OBAMA / "obama.jpg", OBAMA / "obama2.jpg"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path)
        missing = subprocess.run(
            [sys.executable, EXAMPLES / "grpc_client.py", address, f"empty/{config.name}", OBAMA / "obama.jpg", OBAMA / "obama2.jpg"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "loaded: True" in run.stdout
    assert "verified: True" in run.stdout and "threshold: 0.74" in run.stdout
    assert len((EXAMPLES / "grpc_client.py").read_text().splitlines()) <= 40
    # a failed load is said, not a traceback from the verify after it
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("LoadModel failed:"), missing.stderr


@pytest.mark.parametrize("path", LOCALAI_MODELS, ids=lambda p: p.stem)
def test_localai_model_yamls_name_the_external_backend_and_match_the_gallery(path):
    config = yaml.safe_load(path.read_text())
    assert config["backend"] == "face-service" and config["name"] == path.stem
    assert config["known_usecases"] == ["face_recognition"]  # LocalAI routes face calls to it
    gallery = {entry.name: entry for entry in read_gallery(str(BUILTIN_INDEX))}
    if path.stem in gallery:  # the gallery's options, with the threshold spelled out
        extra = [o for o in config["options"] if o not in gallery[path.stem].options]
        assert set(gallery[path.stem].options) <= set(config["options"])
        assert all(o.startswith("verify_threshold:") for o in extra)


def test_localai_run_script_registers_the_backend_by_address():
    script = EXAMPLES / "localai" / "run.sh"
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    text = script.read_text()
    assert '--external-grpc-backends "face-service:127.0.0.1:$PORT"' in text
    assert 'face-backend --addr "127.0.0.1:$PORT"' in text
