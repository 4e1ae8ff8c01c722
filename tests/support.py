"""Shared test helpers: where ../shared is, real backend processes on free ports."""
import contextlib
import csv
import os
import pathlib
import subprocess
import sys
import time

import grpc
import pytest

from face_contract.rpc import backend_pb2 as pb
from face_contract.rpc import backend_pb2_grpc as pb_grpc
from bench.datasets import FACES, MODELS, ROOT, SHARED  # noqa: F401  (re-exported for tests)
from bench.pipeline import real_pack_options
from bench.service import stop_process
from gateway.pool.members import free_port  # noqa: F401  (re-exported for tests)

needs_shared = pytest.mark.skipif(
    not (MODELS / "MANIFEST.tsv").exists(),
    reason="../shared (real weights and photos) is not beside this checkout",
)

# The complete real test pack assembled from ../shared/models.
REAL_PACK_OPTIONS = real_pack_options()


def read_labels(folder: str) -> list[dict]:
    with open(FACES / folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def image_b64(path: pathlib.Path) -> str:
    import base64
    return base64.b64encode(pathlib.Path(path).read_bytes()).decode()


@contextlib.contextmanager
def backend_process(env: dict | None = None, startup_timeout: float = 60.0):
    """Starts `python -m backend` on a free port; yields (process, address)."""
    addr = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend", "--addr", addr],
        cwd=ROOT, env={**os.environ, **(env or {})},
    )
    try:
        channel = grpc.insecure_channel(addr)
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                break
            except grpc.FutureTimeoutError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"backend at {addr} did not start (exit {proc.poll()})")
        channel.close()
        yield proc, addr
    finally:
        stop_process(proc, grace=15)


def stub_for(addr: str):
    """A Backend stub on a channel with the server's 50 MB message limits."""
    opts = [("grpc.max_send_message_length", 50 * 1024 * 1024),
            ("grpc.max_receive_message_length", 50 * 1024 * 1024)]
    channel = grpc.insecure_channel(addr, options=opts)
    return pb_grpc.BackendStub(channel), channel


def load_model(stub, name: str = "test-pack", options=None, model_path: str = "", timeout=120):
    return stub.LoadModel(pb.ModelOptions(Model=name, ModelPath=model_path,
                                          Options=list(options or REAL_PACK_OPTIONS)),
                          timeout=timeout)
