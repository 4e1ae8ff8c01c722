"""deploy/kubernetes/: every manifest valid against the Kubernetes schemas (offline, strict:
no unknown fields), and wired together: probes, the Secret's keys, Services' names."""
import kubernetes_validate
import pytest
import yaml

from support import ROOT

MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
DOCS = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]
BY_KIND = {(doc["kind"], doc["metadata"]["name"]): doc for doc in DOCS}
K8S_VERSION = "1.30.0"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid_for_kubernetes(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises naming the field


def container(kind: str, name: str) -> dict:
    [only] = BY_KIND[(kind, name)]["spec"]["template"]["spec"]["containers"]
    return only


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_gateway_replicas_probe_healthz_and_readyz_and_reach_the_services():
    gateway = BY_KIND[("Deployment", "face-gateway")]
    assert gateway["spec"]["replicas"] >= 2
    c = container("Deployment", "face-gateway")
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = env_of(c)
    model, _, address = env["FACE_BACKENDS"].partition("=")
    assert model == env["FACE_DEFAULT_MODEL"] == env_of(
        container("Deployment", "face-backend"))["FACE_DEFAULT_MODEL"]
    host, port = address.split(":")
    backend_service = BY_KIND[("Service", host)]["spec"]["ports"][0]
    assert backend_service["port"] == int(port)
    assert "grpc" in [p["name"] for p in container("Deployment", "face-backend")["ports"]]
    assert "@face-db:5432/face" in env["FACE_STORES"] and env["FACE_DEFAULT_STORE"] == "shared"
    assert ("Service", "face-db") in BY_KIND and ("StatefulSet", "face-db") in BY_KIND


def test_every_secret_reference_names_a_key_of_the_secret():
    secret = BY_KIND[("Secret", "face-keys")]["stringData"]
    refs = [e["valueFrom"]["secretKeyRef"] for doc in DOCS if doc["kind"] != "Secret"
            and doc["kind"] != "Service"
            for c in doc["spec"]["template"]["spec"]["containers"]
            for e in c.get("env", []) if "valueFrom" in e]
    assert {r["name"] for r in refs} == {"face-keys"}
    assert {r["key"] for r in refs} == set(secret)
    assert "FACE_API_KEYS" in env_of(container("Deployment", "face-gateway"))


def test_pods_run_as_the_images_user_and_group():
    for name in ("face-gateway", "face-backend"):
        context = BY_KIND[("Deployment", name)]["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsUser"] == context["runAsGroup"] == 10001, name
