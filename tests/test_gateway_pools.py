"""Backend pools under the real gateway: several real backends per model, killed, hung
(SIGSTOP) and swapped, with the real test pack."""
import collections
import concurrent.futures
import contextlib
import os
import signal
import time

import grpc
import httpx
import pytest

from face_contract.rpc import backend_pb2 as pb
from gateway_support import gateway_process, wait_gone, write_config
from support import FACES, REAL_PACK_OPTIONS, backend_process, image_b64, needs_shared, stub_for

pytestmark = needs_shared

MODEL = "test-pack"
TOKEN = "pool-secret"
FACE = FACES / "lfw_grey" / "Aaron_Sorkin" / "Aaron_Sorkin_0001.jpg"


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def pool_of(client, model=MODEL) -> list[dict]:
    return next(m for m in ok(client.get("/v1/models"))["data"] if m["id"] == model)["backends"]


def wait_for(condition, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def ready(client) -> bool:
    """Every backend of the default model is loaded and healthy (preloaded at start)."""
    answer = client.get("/readyz")
    return answer.status_code == 200 and answer.json()["backends"] == {MODEL: "ok"}


def embed_stream(url: str, seconds: float, clients: int = 3, model: str = MODEL) -> list[int]:
    """Statuses of embed calls sent back to back by `clients` callers for `seconds`."""
    body = {"model": model, "img": image_b64(FACE)}
    until = time.monotonic() + seconds

    def caller():
        statuses = []
        with httpx.Client(base_url=url, timeout=45) as client:  # a hang fails the test
            while time.monotonic() < until:
                statuses.append(client.post("/v1/face/embed", json=body).status_code)
        return statuses

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return [s for f in [pool.submit(caller) for _ in range(clients)] for s in f.result()]


def test_two_backends_share_calls_and_killing_one_loses_no_request(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCALAI_GRPC_AUTH_TOKEN", raising=False)  # a random token per start
    write_config(tmp_path / "models", MODEL)
    with gateway_process(tmp_path / "models", tmp_path / "data", "--default-model", MODEL,
                         "--backends-per-model", "2") as (_, url), \
            httpx.Client(base_url=url, timeout=60) as client:
        wait_for(lambda: ready(client), what="both backends loaded")
        assert len(pool_of(client)) == 2
        statuses = embed_stream(url, 2.0)
        assert set(statuses) == {200}
        members = pool_of(client)
        assert all(m["in_pool"] and m["calls"] >= 3 for m in members), members
        # Nobody else can load a model into them: each has a bearer token of the gateway's.
        for member in members:
            stub, channel = stub_for(member["address"])
            with pytest.raises(grpc.RpcError) as denied:
                stub.LoadModel(pb.ModelOptions(Model="intruder"), timeout=10)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
            channel.close()

        victim = members[0]["pid"]
        with concurrent.futures.ThreadPoolExecutor(1) as runner:
            stream = runner.submit(embed_stream, url, 5.0)
            time.sleep(1.5)
            os.kill(victim, signal.SIGKILL)
            statuses = stream.result()
        print(f"\nstatuses across the kill of one of two backends: "
              f"{dict(collections.Counter(statuses))}")
        assert set(statuses) == {200} and len(statuses) > 20
        assert wait_gone(victim)
        members = wait_for(lambda: (p := pool_of(client)) and all(m["in_pool"] for m in p)
                           and victim not in [m["pid"] for m in p] and p,
                           what="the killed backend restarted and back in the pool")
        assert sorted(m["starts"] for m in members) == [1, 2]
        metrics = client.get("/metrics").text
        assert f'face_gateway_backend_starts_total{{model="{MODEL}"}} 3.0' in metrics
        for member in members:
            assert f'face_gateway_backend_calls_total{{backend="{member["address"]}",' \
                   f'model="{MODEL}"}}' in metrics


def test_hung_backend_gets_503_and_is_restarted(tmp_path):
    write_config(tmp_path / "models", MODEL)
    with gateway_process(tmp_path / "models", tmp_path / "data", "--default-model", MODEL,
                         "--backend-timeout", "3") as (_, url), \
            httpx.Client(base_url=url, timeout=60) as client:
        wait_for(lambda: ready(client), what="the backend loaded")
        body = {"img": image_b64(FACE)}
        ok(client.post("/v1/face/embed", json=body))
        [member] = pool_of(client)
        os.kill(member["pid"], signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            started = time.monotonic()
            hung = client.post("/v1/face/embed", json=body)
            assert hung.status_code == 503, hung.text
            assert "in time" in hung.json()["error"]["message"]
            assert time.monotonic() - started < 20
            # The health check finds it hung: killed (stopped as it is) and started again.
            assert wait_gone(member["pid"], timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member["pid"], signal.SIGCONT)
        wait_for(lambda: client.post("/v1/face/embed", json=body).status_code == 200,
                 what="a restarted backend")
        [restarted] = pool_of(client)
        assert restarted["pid"] != member["pid"] and restarted["starts"] == 2


def test_remote_pool_hung_member_out_and_back_and_swapped_model_reloaded(tmp_path):
    write_config(tmp_path / "models", "ext")
    env = {"LOCALAI_GRPC_AUTH_TOKEN": TOKEN}
    with backend_process(env=env) as (first, addr1), backend_process(env=env) as (_, addr2), \
            gateway_process(tmp_path / "models", tmp_path / "data", "--backend", f"ext={addr1}",
                            "--backend", f"ext={addr2}", "--backend-timeout", "3",
                            env=env) as (_, url), \
            httpx.Client(base_url=url, timeout=60) as client:
        body = {"model": "ext", "img": image_b64(FACE)}
        reference = ok(client.post("/v1/face/embed", json=body))["embedding"]
        assert set(embed_stream(url, 1.0, model="ext")) == {200}
        assert [m["address"] for m in pool_of(client, "ext")] == [addr1, addr2]
        assert all(m["calls"] > 0 for m in pool_of(client, "ext"))

        first.send_signal(signal.SIGSTOP)
        try:
            # Calls caught on the hung member get 503 at their deadline; the health check
            # then takes it out and every call goes to the other one.
            wait_for(lambda: not pool_of(client, "ext")[0]["in_pool"], what="hung member out")
            assert set(embed_stream(url, 1.0, model="ext")) == {200}
            assert ok(client.get("/readyz"))["backends"]["ext"].startswith("degraded: 1 of 2")
        finally:
            first.send_signal(signal.SIGCONT)
        wait_for(lambda: pool_of(client, "ext")[0]["in_pool"], what="member back in the pool")
        calls_before = pool_of(client, "ext")[0]["calls"]

        # Someone with the token loads another model into the first backend: the gateway
        # notices the wrong identity, loads its own again and answers as before.
        stub, channel = stub_for(addr1)
        auth = (("authorization", f"Bearer {TOKEN}"),)
        assert stub.LoadModel(pb.ModelOptions(Model="swapped", Options=REAL_PACK_OPTIONS),
                              timeout=120, metadata=auth).success
        for _ in range(4):
            assert ok(client.post("/v1/face/embed", json=body))["embedding"] == \
                pytest.approx(reference, abs=1e-5)
        wait_for(lambda: pool_of(client, "ext")[0]["in_pool"], what="reloaded, back in the pool")
        assert set(embed_stream(url, 1.0, model="ext")) == {200}
        assert pool_of(client, "ext")[0]["calls"] > calls_before
        probe = stub.Embedding(pb.PredictOptions(Images=[body["img"]], ModelIdentity="ext"),
                               timeout=30, metadata=auth)
        assert probe.dim == 128
        channel.close()
