"""Installed model configs: LocalAI-style YAML files in the models folder.

A config names the model, the backend, the `key:value` options LoadModel gets and
the files it uses; ModelPath for LoadModel is the models folder itself. The
installer writes these, and a user may write one by hand for a custom pack.
Installed configs also carry each file's SHA-256 (for `verify`) and the licence.
"""
import dataclasses
import logging
import os
import pathlib

import yaml

log = logging.getLogger("gallery.configs")


@dataclasses.dataclass
class ModelConfig:
    name: str
    backend: str
    options: list[str]
    model: str
    files: list[str]
    path: pathlib.Path  # the YAML file
    license: str = ""
    file_sha256: dict[str, str] = dataclasses.field(default_factory=dict)  # by entry of `files`

    @property
    def models_dir(self) -> pathlib.Path:
        return self.path.parent

    def used_paths(self) -> set[pathlib.Path]:
        """Resolved paths this model reads: its files, the files its options name, its pack folder.

        Options count as well as `files` so that a hand-written config that names a
        shared file only in its options still keeps that file from being removed.
        """
        names = [*self.files, self.model]
        for item in self.options:
            key, _, value = item.partition(":")
            if key.strip().endswith("_onnx") or key.strip() == "model_pack":
                names.append(value.strip())
        return {(self.models_dir / name).resolve() for name in names if name}

    def option(self, key: str, default: str | None = None) -> str | None:
        for item in self.options:
            k, _, v = item.partition(":")
            if k.strip() == key:
                return v.strip()
        return default

    def number(self, key: str) -> float | None:
        """A numeric option, or None when absent; a malformed one is logged and ignored
        (LoadModel refuses such a config, so no request is served with it)."""
        text = self.option(key)
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            log.warning("model %s: %s %r is not a number", self.name, key, text)
            return None


class ConfigError(ValueError):
    pass


def read_config(path: pathlib.Path) -> ModelConfig:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read model config: {exc}") from None
    if not isinstance(doc, dict) or not doc.get("name"):
        raise ConfigError(f"{path}: a model config needs a 'name'")
    options = doc.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) and ":" in o for o in options):
        raise ConfigError(f"{path}: 'options' must be a list of 'key:value' strings")
    entries = doc.get("files") or []
    if not all(isinstance(f, str) or (isinstance(f, dict) and f.get("filename")) for f in entries):
        raise ConfigError(f"{path}: every entry of 'files' needs a 'filename'")
    files = [f["filename"] if isinstance(f, dict) else str(f) for f in entries]
    hashes = {f["filename"]: str(f["sha256"]) for f in entries if isinstance(f, dict) and f.get("sha256")}
    return ModelConfig(
        name=str(doc["name"]), backend=str(doc.get("backend", "insightface")), options=options,
        model=str((doc.get("parameters") or {}).get("model", "")), files=files, path=path,
        license=str(doc.get("license") or ""), file_sha256=hashes,
    )


def write_config(models_dir: pathlib.Path, name: str, *, backend: str, options: list[str],
                 model: str, files: list[dict], license: str = "", description: str = "") -> pathlib.Path:
    """Writes `<models_dir>/<name>.yaml` atomically: readers see the old file or the whole new one."""
    doc = {"name": name, "description": description, "license": license, "backend": backend,
           "options": list(options), "parameters": {"model": model}, "files": files}
    path = pathlib.Path(models_dir) / f"{name}.yaml"
    staging = path.with_name(f".{name}.yaml.tmp")  # not a *.yaml: never read as a config
    staging.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    os.replace(staging, path)
    return path


def load_model_configs(models_dir: pathlib.Path) -> dict[str, ModelConfig]:
    """Every *.yaml / *.yml config in models_dir, by model name (unreadable ones skipped)."""
    configs = {}
    for path in sorted(pathlib.Path(models_dir).glob("*.y*ml")):
        try:
            cfg = read_config(path)
        except ConfigError:
            continue
        configs[cfg.name] = cfg
    return configs
