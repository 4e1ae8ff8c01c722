"""API keys, scopes, the keys file and SIGHUP, the Host check and the refusal to listen publicly
without keys, on real gateway processes. Their one model is an external backend nobody runs,
so no model loads: the routes that need a backend prove only that a request got past the
keys (test_gateway_hardening.py has the 200s on the real pack)."""
import os
import signal
import subprocess
import time

import httpx
import pytest

from gateway.app import create_app
from gateway.middleware.auth import parse_keys
from gateway.settings import Settings
from gateway_support import app_server, gateway_command, gateway_process
from support import ROOT, free_port

RW, RO, FILE_KEY, NEW_KEY = ("rw-key-3f9c2a71d8e54b06", "ro-key-8b1e6d2c4a9f7035",
                             "file-key-5d7a9c1e3b2f4068", "new-key-0c6e8a2d4f1b3957")
ALL_KEYS = (RW, RO, FILE_KEY, NEW_KEY)
DOWN = f"127.0.0.1:{free_port()}"  # nothing listens here
GARBAGE = {"img": "bm90IGFuIGltYWdl", "img1": "bm90IGFuIGltYWdl", "img2": "bm90IGFuIGltYWdl",
           "image": "bm90IGFuIGltYWdl", "name": "x", "id": "no-such-id"}
POSTS = {"/v1/face/verify": ("img1", "img2"), "/v1/face/analyze": ("img",),
         "/v1/face/embed": ("img",), "/v1/detection": ("image",), "/v1/face/identify": ("img",),
         "/v1/face/register": ("img", "name"), "/v1/face/forget": ("id",),
         "/v1/face/reembed": ()}
READ_GETS = ("/v1/face/registry", "/v1/models")
WRITES = ("/v1/face/register", "/v1/face/forget", "/v1/face/reembed")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A gateway with FACE_API_KEYS (rw + ro) and a keys file; yields (process, client, paths)."""
    tmp = tmp_path_factory.mktemp("auth")
    keys_file = tmp / "keys.txt"
    keys_file.write_text(f"# the keys of the test\n{FILE_KEY}:ro  # a trailing comment\n\n")
    log = tmp / "gateway.log"
    with open(log, "wb") as out, \
            gateway_process(tmp / "models", tmp / "data", "--backend", f"ext={DOWN}",
                            "--api-keys-file", str(keys_file), "--log-level", "debug",
                            env={"FACE_API_KEYS": f"{RW}, {RO}:ro"}, stdout=out,
                            stderr=subprocess.STDOUT) as (proc, url), \
            httpx.Client(base_url=url, timeout=30) as client:
        yield proc, client, {"keys": keys_file, "log": log}


def error_of(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == status
    for word in words:
        assert word in body["error"]["message"], body
    return body["error"]


def call(client, path: str, key: str | None = None, header: str = "x-api-key", **kwargs):
    headers = kwargs.pop("headers", None) or ({} if key is None else (
        {"x-api-key": key} if header == "x-api-key" else {"Authorization": f"Bearer {key}"}))
    if path in POSTS:
        body = {field: GARBAGE[field] for field in POSTS[path]}
        return client.post(path, json=body, headers=headers, **kwargs)
    return client.get(path, headers=headers, **kwargs)


def test_key_entries_and_their_errors():
    keys = parse_keys([RW, f"{RO}:ro", f"{FILE_KEY}:rw"], "FACE_API_KEYS")
    assert sorted(keys.values()) == ["ro", "rw", "rw"]
    for entries, words in [([f"{RW}:admin"], "rw or ro"), (["short:ro"], "16 characters"),
                           ([f"{RW} x"], "without spaces"),
                           ([RW, f"{RW}:ro"], "both rw and ro")]:
        with pytest.raises(ValueError) as err:
            parse_keys(entries, "FACE_API_KEYS")
        assert words in str(err.value) and RW not in str(err.value)


def test_no_or_unknown_key_is_401_on_every_guarded_route(keyed):
    _, client, _ = keyed
    for path in (*POSTS, *READ_GETS, "/metrics"):
        for key in (None, "not-a-key-of-this-gateway", RW[:-1]):
            response = call(client, path, key)
            error_of(response, 401, "API key")
            assert response.headers["www-authenticate"] == "Bearer"
            assert error_of(response, 401)["type"] == "unauthorized"
    error_of(client.get("/metrics", headers={"Authorization": f"Basic {RW}"}), 401)


def test_read_only_key_reads_and_gets_403_on_writes(keyed):
    _, client, _ = keyed
    for path in POSTS:
        for key in (RO, FILE_KEY):
            response = call(client, path, key, header="bearer")
            if path in WRITES:
                assert error_of(response, 403, "read-only", path)["type"] == "forbidden"
            else:  # past the keys: the image is refused, or the backend is down
                assert response.status_code in (400, 503), response.text
    for path in READ_GETS:
        assert call(client, path, RO).status_code == 200
    people = {"x-api-key": RO}
    assert client.get("/v1/face/people", headers=people).status_code == 200
    assert client.get("/v1/face/people/nobody", headers=people).status_code == 404
    for method, path, body in (("PATCH", "/v1/face/people/nobody", {"name": "x"}),
                               ("DELETE", "/v1/face/people/nobody", None),
                               ("POST", "/v1/face/people/merge", {"into": "a", "from": ["b"]}),
                               ("POST", "/v1/face/people/move", {"face_id": "a"})):
        response = client.request(method, path, json=body, headers=people)
        error_of(response, 403, "read-only", path)


def test_read_write_key_passes_everywhere_and_both_headers_work(keyed):
    _, client, _ = keyed
    for header in ("x-api-key", "bearer"):
        for path in POSTS:
            assert call(client, path, RW, header).status_code in (400, 404, 503)
        for path in (*READ_GETS, "/metrics", "/openapi.json", "/docs"):
            assert call(client, path, RW, header).status_code == 200


def test_every_key_sent_must_be_valid_and_the_narrower_scope_wins(keyed):
    _, client, _ = keyed
    both = {"x-api-key": RW, "Authorization": "Bearer not-a-key-of-this-gateway"}
    error_of(client.get("/v1/face/registry", headers=both), 401, "not valid")
    mixed = {"x-api-key": RW, "Authorization": f"Bearer {RO}"}
    assert client.get("/v1/face/registry", headers=mixed).status_code == 200
    error_of(call(client, "/v1/face/forget", headers=mixed), 403, "read-only")


def test_open_paths_need_no_key(keyed):
    _, client, _ = keyed
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 503  # open, and says the backend is down
    for path in ("/", "/ui/app.js", "/ui/style.css"):  # the page asks for a key itself
        assert client.get(path).status_code == 200, path
    # the docs hold no data: with keys on they open, and Swagger's Authorize carries the key
    for path in ("/docs", "/redoc", "/openapi.json", "/static-offline-docs/swagger-ui-bundle.js"):
        assert client.get(path).status_code == 200, path
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert set(schemes) == {"bearer", "apiKey"}
    error_of(client.get("/metrics"), 401)


def test_metrics_can_be_opened(tmp_path):
    app = create_app(Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data",
                              api_keys=RW, open_metrics=True))
    with app_server(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/metrics").status_code == 200
        error_of(client.get("/v1/face/registry"), 401)


def test_backend_addresses_only_for_a_read_write_key(keyed):
    _, client, _ = keyed
    listed = call(client, "/v1/models", RW).json()["data"]
    assert listed[0]["id"] == "ext" and listed[0]["address"] == DOWN
    hidden = call(client, "/v1/models", RO).json()["data"]
    assert hidden == [{"id": "ext", "object": "model", "loaded": False}]


def test_openapi_documents_the_key_schemes(keyed):
    _, client, _ = keyed
    spec = call(client, "/openapi.json", RO).json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    verify = spec["paths"]["/v1/face/verify"]["post"]
    assert verify["security"] == [{"bearer": []}, {"apiKey": []}] and "401" in verify["responses"]
    assert "403" in spec["paths"]["/v1/face/register"]["post"]["responses"]
    assert "403" not in verify["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_keys_file_is_reloaded_on_sighup(keyed):
    proc, client, paths = keyed

    def after_sighup(until):
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not until() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert until()

    paths["keys"].write_text(f"{NEW_KEY}:rw\n")
    after_sighup(lambda: call(client, "/v1/face/registry", NEW_KEY).status_code == 200)
    error_of(call(client, "/v1/face/registry", FILE_KEY), 401)  # dropped from the file
    assert call(client, "/v1/face/registry", RW).status_code == 200  # FACE_API_KEYS stay

    # A file that does not parse leaves the keys in force, and says why in the log.
    paths["keys"].write_text("short\n")
    after_sighup(lambda: "not reloaded" in paths["log"].read_text())
    assert call(client, "/v1/face/registry", NEW_KEY).status_code == 200
    assert proc.poll() is None


def test_host_header_must_be_an_allowed_host(keyed):
    _, client, _ = keyed
    port = client.base_url.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.2", ""):
        response = client.get("/v1/face/registry", headers={"Host": host, "x-api-key": RW})
        assert error_of(response, 400, "allowed-hosts")["type"] == "invalid_request"
    error_of(client.get("/", headers={"Host": "rebound.example"}), 400, "Host")
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        response = client.get("/v1/face/registry", headers={"Host": host, "x-api-key": RW})
        assert response.status_code == 200, host
    # Health probes come by any address.
    assert client.get("/healthz", headers={"Host": "10.1.2.3:8080"}).status_code == 200


def test_logs_never_show_a_key(keyed):
    _, client, paths = keyed
    for key in ALL_KEYS:
        call(client, "/v1/face/registry", key)
        call(client, "/v1/face/register", key)
    text = paths["log"].read_text()
    assert "GET /v1/face/registry" in text  # the access log is there
    for key in ALL_KEYS:
        assert key not in text


def test_public_listen_without_keys_is_refused(tmp_path):
    port = free_port()
    command = gateway_command(tmp_path / "models", tmp_path / "data", port,
                              "--host", "0.0.0.0", "--backend", f"ext={DOWN}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACE_")}
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0
    assert "refusing to listen on 0.0.0.0 without API keys" in refused.stderr
    assert "--insecure" in refused.stderr
    # --insecure starts it; '*' answers any Host; with keys off, remote callers would not see
    # backend addresses, but loopback ones do.
    with gateway_process(tmp_path / "models", tmp_path / "data", "--host", "0.0.0.0",
                         "--insecure", "--allowed-hosts", "*", "--backend", f"ext={DOWN}",
                         env=env) as (_, url):
        response = httpx.get(f"{url}/v1/models", headers={"Host": "face.example"})
        assert response.status_code == 200 and response.json()["data"][0]["address"] == DOWN
