"""Installed model configs: LocalAI-style YAML files in the models folder.

A config names the model, the backend, the `key:value` options LoadModel gets and
the files it uses; ModelPath for LoadModel is the models folder itself. The
installer writes these, and a user may write one by hand for a custom pack.
"""
import dataclasses
import pathlib

import yaml


@dataclasses.dataclass
class ModelConfig:
    name: str
    backend: str
    options: list[str]
    model: str
    files: list[str]
    path: pathlib.Path  # the YAML file

    @property
    def models_dir(self) -> pathlib.Path:
        return self.path.parent

    def option(self, key: str, default: str | None = None) -> str | None:
        for item in self.options:
            k, _, v = item.partition(":")
            if k.strip() == key:
                return v.strip()
        return default


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
    files = [f["filename"] if isinstance(f, dict) else str(f) for f in doc.get("files") or []]
    return ModelConfig(
        name=str(doc["name"]), backend=str(doc.get("backend", "insightface")), options=options,
        model=str((doc.get("parameters") or {}).get("model", "")), files=files, path=path,
    )


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
