"""Which kinds are enabled, and each environment's settings.

Settings are layered, later layers winning: ini defaults < buildenv.yaml
section < marker keyword arguments. Relative paths (dockerfile, context)
resolve against the directory of the layer that named them: the rootdir for
ini, the YAML file's directory, the test file's directory for a marker.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from .errors import ConfigError

KINDS = ("local", "container", "dind", "kind", "vm")
DEFAULT_KINDS = ("local",)
DOCKER_KINDS = frozenset({"container", "dind", "kind"})
PATH_KEYS = frozenset({"dockerfile", "context", "config", "vagrantfile"})


@dataclass(frozen=True)
class LocalSettings:
    environment: dict[str, str] = field(default_factory=dict)
    timeout: Optional[float] = None


@dataclass(frozen=True)
class ContainerSettings(LocalSettings):
    image: Optional[str] = None
    dockerfile: Optional[Path] = None
    context: Optional[Path] = None
    target: Optional[str] = None
    build_args: dict[str, str] = field(default_factory=dict)
    network: Optional[str] = None
    ssh_agent: bool = False
    provision: tuple[str, ...] = ()  # commands run once in a fresh builder, committed to a cached snapshot
    provision_user: str = "root"


@dataclass(frozen=True)
class KindSettings(LocalSettings):
    image: Optional[str] = None  # node image (kind create cluster --image)
    config: Union[Path, dict[str, Any], None] = None  # a kind Cluster config: file or mapping
    wait: str = "120s"
    cluster: Optional[str] = None  # reuse this existing cluster; it is then never deleted


@dataclass(frozen=True)
class VMSettings(LocalSettings):
    vagrantfile: Optional[Path] = None  # the golden VM's Vagrantfile (its directory holds the provisioners)
    provider: str = "libvirt"
    boot_timeout: float = 600
    reset: str = "destroy"  # or "snapshot": one clone per process, restored to its boot snapshot between tests


Settings = Union[LocalSettings, ContainerSettings, KindSettings, VMSettings]
SETTINGS: dict[str, type] = {"local": LocalSettings, "container": ContainerSettings, "dind": ContainerSettings,
                             "kind": KindSettings, "vm": VMSettings}


def known_keys(kind: str) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(SETTINGS.get(kind, LocalSettings)))


# --- which kinds --------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    kinds: tuple[str, ...]
    explicit: bool  # named by the user: missing tooling is then an error, never a skip
    source: str

    def enabled(self, kind: str) -> bool:
        return kind in self.kinds


def parse_selection(text: Optional[str], source: str, available: Callable[[str], bool]) -> Selection:
    """`local,container` or `auto`; unknown names are a ConfigError naming the choices."""
    if not text or not text.strip():
        return Selection(DEFAULT_KINDS, explicit=False, source="default")
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if names == ["auto"]:
        return Selection(tuple(k for k in KINDS if k == "local" or available(k)), explicit=False, source=source)
    unknown = [name for name in names if name not in KINDS]
    if unknown:
        raise ConfigError(f"unknown kind {unknown[0]!r} in {source}; choose from {', '.join(KINDS)} or auto")
    return Selection(tuple(dict.fromkeys(names)), explicit=True, source=source)


# --- buildenv.yaml ----------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """One source of settings for one kind, with where its relative paths start."""

    values: Mapping[str, Any]
    base_dir: Path
    source: str


def load_config_file(path: Path) -> dict[str, Layer]:
    """Parse and validate buildenv.yaml: one mapping per kind, known keys only."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where} is not valid YAML ({problem}); fix the file or point ini buildenv_config elsewhere") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror}); fix ini buildenv_config") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of kind sections (local:, container:, ...), got {type(data).__name__}")
    layers = {}
    for kind, values in data.items():
        if kind not in KINDS:
            raise ConfigError(f"{path}: unknown section {kind!r}; sections are {', '.join(KINDS)}")
        values = values or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {kind!r} must be a mapping of settings")
        layer = Layer(values, path.parent, f"{path.name} section {kind!r}")
        check_keys(kind, layer)
        layers[kind] = layer
    return layers


def check_keys(kind: str, layer: Layer) -> None:
    allowed = known_keys(kind)
    for key in layer.values:
        if key not in allowed:
            raise ConfigError(f"unknown keyword {key!r} in {layer.source}; {kind} takes {', '.join(allowed)}")


def merge(kind: str, layers: list[Layer]) -> Settings:
    """Fold the layers (weakest first) into the kind's settings dataclass."""
    cls = SETTINGS.get(kind, LocalSettings)
    values: dict[str, Any] = {}
    for layer in layers:
        check_keys(kind, layer)
        for key, value in layer.values.items():
            if key in PATH_KEYS and isinstance(value, (str, Path)):
                value = (layer.base_dir / str(value)).resolve()
            values[key] = value
    for key in ("environment", "build_args"):
        if key in values and not isinstance(values[key], Mapping):
            raise ConfigError(f"{kind} setting {key!r} must be a mapping of names to strings")
        if key in values:
            values[key] = {str(k): str(v) for k, v in values[key].items()}
    if "provision" in values:
        steps = values["provision"]
        values["provision"] = (steps,) if isinstance(steps, str) else tuple(str(step) for step in steps or ())
    if kind == "vm" and values.get("reset", "destroy") not in ("destroy", "snapshot"):
        raise ConfigError(f"vm setting reset must be 'destroy' or 'snapshot', not {values['reset']!r}")
    if values.get("timeout") is not None:
        values["timeout"] = float(values["timeout"])
    return cls(**values)  # type: ignore[no-any-return]
