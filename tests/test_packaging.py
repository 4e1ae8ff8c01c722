"""`make install` says nothing that looks like a failed build: setuptools builds the project
(a wheel, and the editable install the Makefile makes) without a warning."""
import subprocess
import zipfile
import sys

from support import ROOT


def test_the_project_builds_without_setuptools_warnings(tmp_path):
    for command in (["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
                    ["install", "--no-deps", "--no-build-isolation", "--dry-run", "-e", "."]):
        run = subprocess.run([sys.executable, "-m", "pip", *command], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert "BuildBackendWarning" not in run.stderr + run.stdout, run.stderr
    wheel = next(tmp_path.glob("face_service-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway/static/app.js" in names and "gallery/index.yaml" in names
