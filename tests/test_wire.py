"""Wire contract: checked-in stubs match the .proto, and a client built from
PROTOCOL.md's tables alone (not the project's .proto) drives the server."""
import filecmp
import subprocess
import sys
import textwrap

from support import FACES, ROOT, backend_process, needs_shared

# Written from ../shared/spec/PROTOCOL.md section 1, independently of proto/backend.proto.
SPEC_PROTO = """
syntax = "proto3";
package backend;
service Backend {
  rpc Health(HealthMessage) returns (Reply);
  rpc LoadModel(ModelOptions) returns (Result);
  rpc Status(HealthMessage) returns (StatusResponse);
  rpc Embedding(PredictOptions) returns (EmbeddingResult);
  rpc Detect(DetectOptions) returns (DetectResponse);
  rpc FaceVerify(FaceVerifyRequest) returns (FaceVerifyResponse);
  rpc FaceAnalyze(FaceAnalyzeRequest) returns (FaceAnalyzeResponse);
}
message HealthMessage {}
message Reply { bytes message = 1; }
message Result { string message = 1; bool success = 2; }
message ModelOptions { string Model = 1; int32 Threads = 15; string ModelFile = 21; bool CUDA = 28;
  string ModelPath = 59; repeated string Options = 62; }
message MemoryUsageData { uint64 total = 1; map<string, uint64> breakdown = 2; }
message StatusResponse { enum State { UNINITIALIZED = 0; BUSY = 1; READY = 2; ERROR = -1; }
  State state = 1; MemoryUsageData memory = 2; }
message PredictOptions { repeated string Images = 42; string ModelIdentity = 54; }
enum EmbeddingLayout { EMBEDDING_LAYOUT_UNSPECIFIED = 0; EMBEDDING_LAYOUT_FINAL = 1;
  EMBEDDING_LAYOUT_PER_TOKEN = 2; }
message EmbeddingResult { repeated float embeddings = 1; int32 tokens = 2; int32 dim = 3;
  int32 prompt_tokens = 4; EmbeddingLayout layout = 5; }
message DetectOptions { string src = 1; string prompt = 2; repeated float points = 3;
  repeated float boxes = 4; float threshold = 5; string ModelIdentity = 6; }
message Detection { float x = 1; float y = 2; float width = 3; float height = 4; float confidence = 5;
  string class_name = 6; bytes mask = 7; }
message DetectResponse { repeated Detection Detections = 1; }
message FacialArea { float x = 1; float y = 2; float w = 3; float h = 4; }
message FaceVerifyRequest { string img1 = 1; string img2 = 2; float threshold = 3; bool anti_spoofing = 4;
  string ModelIdentity = 5; }
message FaceVerifyResponse { bool verified = 1; float distance = 2; float threshold = 3; float confidence = 4;
  string model = 5; FacialArea img1_area = 6; FacialArea img2_area = 7; float processing_time_ms = 8;
  bool img1_is_real = 9; float img1_antispoof_score = 10; bool img2_is_real = 11;
  float img2_antispoof_score = 12; }
message FaceAnalyzeRequest { string img = 1; repeated string actions = 2; bool anti_spoofing = 3;
  string ModelIdentity = 4; }
message FaceAnalysis { FacialArea region = 1; float face_confidence = 2; float age = 3;
  string dominant_gender = 4; map<string, float> gender = 5; string dominant_emotion = 6;
  map<string, float> emotion = 7; string dominant_race = 8; map<string, float> race = 9;
  bool is_real = 10; float antispoof_score = 11; }
message FaceAnalyzeResponse { repeated FaceAnalysis faces = 1; }
"""

# Runs in its own interpreter: its `backend` package is the spec client, not ours.
CLIENT = """
import base64, sys
import grpc
import spec_pb2 as pb, spec_pb2_grpc as pb_grpc
addr, photo, pack = sys.argv[1], sys.argv[2], sys.argv[3:]
stub = pb_grpc.BackendStub(grpc.insecure_channel(addr))
assert stub.Health(pb.HealthMessage()).message == b"OK"
assert stub.LoadModel(pb.ModelOptions(Model="wire", Options=pack)).success
assert stub.Status(pb.HealthMessage()).state == pb.StatusResponse.READY
img = base64.b64encode(open(photo, "rb").read()).decode()
emb = stub.Embedding(pb.PredictOptions(Images=[img]))
assert emb.dim == len(emb.embeddings) == 128 and emb.layout == pb.EMBEDDING_LAYOUT_FINAL
det = stub.Detect(pb.DetectOptions(src=img)).Detections
assert det and det[0].class_name == "face" and det[0].width > 0
ver = stub.FaceVerify(pb.FaceVerifyRequest(img1=img, img2=img, ModelIdentity="wire"))
assert ver.verified and ver.model == "wire" and ver.img1_area.w > 0
ana = stub.FaceAnalyze(pb.FaceAnalyzeRequest(img=img, actions=["gender"])).faces
assert ana and set(ana[0].gender) == {"Woman", "Man"}
print("spec client ok")
"""


def test_checked_in_stubs_match_the_proto(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)], check=True)
    for name in ("backend_pb2.py", "backend_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / name, ROOT / "face_contract" / "rpc" / name, shallow=False), (
            f"face_contract/rpc/{name} is stale: run `make proto`")


@needs_shared
def test_client_from_protocol_tables_drives_the_server(tmp_path):
    from support import REAL_PACK_OPTIONS
    (tmp_path / "spec.proto").write_text(SPEC_PROTO)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}",
                    f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                    str(tmp_path / "spec.proto")], check=True)
    (tmp_path / "client.py").write_text(textwrap.dedent(CLIENT))
    photo = FACES / "lfw_grey" / "Aaron_Sorkin" / "Aaron_Sorkin_0001.jpg"
    with backend_process() as (_, addr):
        out = subprocess.run([sys.executable, "client.py", addr, str(photo), *REAL_PACK_OPTIONS],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "spec client ok" in out.stdout
