"""Gateway configuration: CLI options and FACE_* variables, model choice, default thresholds."""
import pathlib

import pytest

from face_contract.errors import InvalidInput, NotFound
from gallery.configs import read_config
from gateway.__main__ import parse_args, settings_from
from gateway.pool.backends import Backends, default_threshold
from gateway.settings import Settings, parse_backend_spec
from gateway_support import write_config


def test_options_come_from_env_and_the_command_line_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("FACE_PORT", "9123")
    monkeypatch.setenv("FACE_MODELS_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("FACE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("FACE_ALLOW_PRIVATE_URLS", "true")
    monkeypatch.setenv("FACE_BACKENDS", "a=127.0.0.1:5000, b=10.0.0.2:6000")
    monkeypatch.setenv("FACE_STORES", "local-store,staff")
    monkeypatch.setenv("FACE_MAX_BODY_BYTES", "1234")
    monkeypatch.setenv("LOCALAI_GRPC_AUTH_TOKEN", "tok")
    args = parse_args(["--port", "9999", "--default-model", "a", "--backend", "c=h:1"])
    settings = settings_from(args)
    assert args.port == 9999 and args.host == "127.0.0.1"
    assert settings.models_dir == pathlib.Path(tmp_path / "m")
    assert settings.data_dir == pathlib.Path(tmp_path / "d")
    assert settings.allow_private_urls is True and settings.max_body_bytes == 1234
    assert settings.external_backends == {"a": ("127.0.0.1:5000",), "b": ("10.0.0.2:6000",),
                                         "c": ("h:1",)}
    assert settings.stores == ("local-store", "staff")
    assert settings.default_model == "a" and settings.auth_token == "tok"


def test_auth_options_from_env_and_defaults(monkeypatch, tmp_path):
    for name in ("FACE_API_KEYS", "FACE_API_KEYS_FILE", "FACE_ALLOWED_HOSTS", "FACE_OPEN_METRICS",
                 "FACE_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    plain = settings_from(parse_args(["--host", "10.0.0.5"]))
    assert plain.api_keys is None and plain.api_keys_file is None and not plain.open_metrics
    assert plain.allowed_hosts == ("10.0.0.5", "localhost", "127.0.0.1", "::1")
    monkeypatch.setenv("FACE_API_KEYS", "k" * 16)
    monkeypatch.setenv("FACE_API_KEYS_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("FACE_ALLOWED_HOSTS", "face.example, 10.0.0.5")
    monkeypatch.setenv("FACE_OPEN_METRICS", "yes")
    monkeypatch.setenv("FACE_INSECURE", "true")
    args = parse_args([])
    keyed = settings_from(args)
    assert keyed.api_keys == "k" * 16 and keyed.api_keys_file == tmp_path / "keys"
    assert keyed.allowed_hosts == ("face.example", "10.0.0.5")
    assert keyed.open_metrics and args.insecure
    assert "k" * 16 not in repr(keyed)  # settings may be logged; keys may not


def test_defaults_without_env(monkeypatch):
    for name in ("FACE_ALLOW_PRIVATE_URLS", "FACE_STORES", "FACE_BACKENDS",
                 "LOCALAI_GRPC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    settings = settings_from(parse_args([]))
    assert settings.allow_private_urls is False and settings.stores == ("local-store",)
    assert settings.external_backends == {} and settings.auth_token is None
    assert settings.max_body_bytes == 48 * 1024 * 1024


def test_limit_options_from_env_and_the_command_line(monkeypatch):
    monkeypatch.setenv("FACE_MAX_CONCURRENCY", "3")
    monkeypatch.setenv("FACE_MAX_INFLIGHT_BYTES", "5000")
    monkeypatch.setenv("FACE_BODY_TIMEOUT", "7.5")
    monkeypatch.setenv("FACE_KEEP_ALIVE_TIMEOUT", "2")
    settings = settings_from(parse_args(["--header-timeout", "4", "--max-concurrency", "9"]))
    assert settings.max_concurrency == 9 and settings.max_inflight_bytes == 5000
    assert settings.body_timeout_s == 7.5 and settings.header_timeout_s == 4
    assert settings.keep_alive_timeout_s == 2


def test_concurrency_default_follows_the_core_count(monkeypatch):
    monkeypatch.delenv("FACE_MAX_CONCURRENCY", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert settings_from(parse_args([])).max_concurrency == 64


@pytest.mark.parametrize("spec", ["nohost", "a=host", "a=host:port", "=h:1"])
def test_bad_backend_specs(spec):
    with pytest.raises(ValueError, match="NAME=HOST:PORT"):
        parse_backend_spec(spec)


def test_bad_store_names(tmp_path):
    with pytest.raises(ValueError, match="store name"):
        Settings(models_dir=tmp_path, data_dir=tmp_path, stores=("../escape",))


def test_stores_by_dsn_from_env_and_flags(monkeypatch):
    monkeypatch.setenv("FACE_STORES", "local-store; shared=postgresql://face:pw@db/faces?"
                                      "host=a,b; side=sqlite:////var/lib/face/side.db")
    monkeypatch.setenv("FACE_DEFAULT_STORE", "shared")
    monkeypatch.setenv("FACE_ANN_THRESHOLD", "50000")
    settings = settings_from(parse_args([]))
    assert settings.store_specs() == {
        "local-store": None, "shared": "postgresql://face:pw@db/faces?host=a,b",
        "side": "sqlite:////var/lib/face/side.db"}
    assert settings.default_store == "shared" and settings.ann_threshold == 50000
    flags = settings_from(parse_args(["--store", "a", "--store", "b=sqlite:///b.db",
                                      "--default-store", "b", "--ann-threshold", "7"]))
    assert flags.store_specs() == {"a": None, "b": "sqlite:///b.db"}
    assert flags.default_store == "b" and flags.ann_threshold == 7


@pytest.mark.parametrize("stores, default, message", [
    (("a=mysql://u:hidden@h/db",), None, "neither postgresql"),
    (("a", "a=sqlite:///x.db"), None, "twice"),
    (("a",), "b", "not a configured store"),
])
def test_bad_store_configuration(tmp_path, stores, default, message):
    with pytest.raises(ValueError, match=message) as bad:
        Settings(models_dir=tmp_path, data_dir=tmp_path, stores=stores, default_store=default)
    assert "hidden" not in str(bad.value)


@pytest.mark.parametrize("options, threshold", [
    (["engine:insightface", "verify_threshold:0.74"], 0.74),
    (["engine:insightface", "model_pack:buffalo_l"], 0.35),
    (["engine:insightface", "model_pack:antelopev2"], 0.35),
    (["engine:insightface", "model_pack:buffalo_s"], 0.40),
    (["engine:insightface", "model_pack:buffalo_sc"], 0.40),
    (["engine:opencv", "detector_onnx:d.onnx", "recognizer_onnx:r.onnx"], 0.50),
    (["engine:onnx_direct"], 0.50),
    (["engine:insightface", "recognizer_onnx:custom.onnx"], 0.35),
    ([], 0.35),
])
def test_default_verify_threshold(tmp_path, options, threshold):
    assert default_threshold(read_config(write_config(tmp_path, "m", options))) == threshold


def test_no_config_falls_back_to_035():
    assert default_threshold(None) == 0.35


def backends(tmp_path, names, **kw) -> Backends:
    for name in names:
        write_config(tmp_path / "models", name)
    return Backends(Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data", **kw))


def test_the_only_installed_model_is_the_default(tmp_path):
    assert backends(tmp_path, ["solo"]).resolve(None) == "solo"


def test_configured_default_model(tmp_path):
    b = backends(tmp_path, ["one", "two"], default_model="two")
    assert b.resolve(None) == "two" and b.resolve("one") == "one"


def test_model_required_or_unknown(tmp_path):
    b = backends(tmp_path, ["one", "two"])
    with pytest.raises(InvalidInput, match="model is required"):
        b.resolve(None)
    with pytest.raises(NotFound, match="'three'.*one, two"):
        b.resolve("three")
    write_config(tmp_path / "models", "three")  # installed while the gateway runs
    assert b.resolve("three") == "three"


def test_external_backend_names_count_as_models(tmp_path):
    b = backends(tmp_path, [], external_backends={"remote": "10.0.0.5:50051"})
    assert b.resolve(None) == "remote" and b.names() == ["remote"]


def test_a_repeated_backend_name_makes_a_pool(monkeypatch):
    monkeypatch.setenv("FACE_BACKENDS", "a=h:1,b=h:3")
    monkeypatch.setenv("FACE_BACKENDS_PER_MODEL", "3")
    settings = settings_from(parse_args(["--backend", "a=h:2", "--backend", "a=h:1"]))
    assert settings.external_backends == {"a": ("h:1", "h:2"), "b": ("h:3",)}
    assert settings.backends_per_model == 3 and settings.backend_threads == 0
    assert settings_from(parse_args(["--backends-per-model", "2", "--backend-threads", "1"])) \
        .backends_per_model == 2
    with pytest.raises(ValueError, match="at least 1"):
        settings_from(parse_args(["--backends-per-model", "0"]))
