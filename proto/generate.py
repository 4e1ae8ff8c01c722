"""Regenerate the Python gRPC stubs for proto/*.proto.

protoc writes `import backend_pb2`; the stubs live inside the `face_contract.rpc`
package, so that import is rewritten to a relative one. Run as
`python proto/generate.py [OUT_DIR]` (default: face_contract/rpc).
"""
import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
# LocalAI's protocol, unchanged, and the service of our own beside it.
PROTOS = ("backend", "face_extras")


def generate(out_dir: pathlib.Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PROTOS:
        rc = protoc.main([
            "grpc_tools.protoc", f"-I{PROTO_DIR}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
            str(PROTO_DIR / f"{name}.proto"),
        ])
        if rc != 0:
            raise SystemExit(f"protoc failed on {name}.proto with exit code {rc}")
        grpc_stub = out_dir / f"{name}_pb2_grpc.py"
        alias = name.replace("_", "__")
        grpc_stub.write_text(grpc_stub.read_text().replace(
            f"import {name}_pb2 as {alias}__pb2", f"from . import {name}_pb2 as {alias}__pb2"))


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "face_contract" / "rpc")
