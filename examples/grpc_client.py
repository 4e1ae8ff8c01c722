"""A plain gRPC client of the backend: load a model, verify two photos.

    face-models install local-pack --models-dir models      # the YAML and its files
    python examples/grpc_client.py 127.0.0.1:50051 models/local-pack.yaml a.jpg b.jpg

The service is `backend.Backend` of proto/backend.proto (LocalAI's protocol); the stubs
ship as face_contract.rpc, or generate your own from the .proto with grpcio-tools.
"""
import base64
import pathlib
import sys

import grpc
import yaml

from face_contract.rpc import backend_pb2 as pb
from face_contract.rpc import backend_pb2_grpc as pb_grpc

address, config_path, *photos = sys.argv[1:]
config = yaml.safe_load(pathlib.Path(config_path).read_text())
limit = 50 * 1024 * 1024  # the backend's message limit; photos are larger than gRPC's 4 MB default
channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", limit)])
stub = pb_grpc.BackendStub(channel)
# ModelPath is where relative file names in the options are looked up (LocalAI: its models
# folder); absolute, because the backend runs in a directory of its own.
loaded = stub.LoadModel(pb.ModelOptions(Model=config["name"], Options=config["options"],
                                        ModelPath=str(pathlib.Path(config_path).resolve().parent)))
if not loaded.success:
    sys.exit(f"LoadModel failed: {loaded.message}")
print("loaded:", loaded.success, loaded.message)
img1, img2 = (base64.b64encode(pathlib.Path(p).read_bytes()).decode() for p in photos)
reply = stub.FaceVerify(pb.FaceVerifyRequest(img1=img1, img2=img2))
print(f"verified: {reply.verified} distance: {reply.distance:.3f} threshold: {reply.threshold:.2f}")
