"""The gateway runs without the backend's model runtime (onnxruntime, OpenCV, onnx):
it imports only face_contract, and the base install does not pull those in."""
import subprocess
import sys
import tomllib

from support import ROOT

RUNTIME = ("onnxruntime", "cv2", "onnx", "backend")

# Runs in a fresh interpreter in which importing any runtime module fails.
BLOCKED_IMPORT = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {RUNTIME!r}:
            raise ImportError("the gateway imported " + name)
sys.meta_path.insert(0, Block())
import gateway.__main__, gateway.app
from gateway.settings import Settings
gateway.app.create_app(Settings(models_dir=sys.argv[1], data_dir=sys.argv[2]))
print("gateway ok")
"""


def test_gateway_imports_no_model_runtime(tmp_path):
    out = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT, str(tmp_path / "models"),
                          str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "gateway ok" in out.stdout


def test_base_install_leaves_the_runtime_to_the_backend_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [dep.split(">")[0].split("=")[0].split(";")[0].strip()
             for dep in project["dependencies"]]
    assert not {"onnxruntime", "opencv-python-headless", "onnx"} & set(names)
    assert "onnxruntime>=1.18" in project["optional-dependencies"]["backend"]
    assert "gateway" in project["optional-dependencies"]
