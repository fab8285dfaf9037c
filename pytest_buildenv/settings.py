"""Which kinds are enabled, and each environment's settings, checked by type.

Settings are layered, later layers winning: ini values and options <
buildenv.yaml section < marker keyword arguments. Each kind declares its
settings as a frozen dataclass (a subclass of CommonSettings, in the kind's
module); every value is checked against the field's type here, once for all
kinds, and a wrong one is one line naming where it came from, the key, the
value and what it should be. Relative paths resolve against the directory of
the layer that named them: the rootdir for ini, the YAML file's directory,
the test file's directory for a marker.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

from . import masking
from .errors import ConfigError
from .result import OUTPUT_LIMIT

if TYPE_CHECKING:
    from .registry import Registry

DEFAULT_KINDS = ("local",)
S = TypeVar("S", bound="CommonSettings")


@dataclass(frozen=True)
class CommonSettings:
    """What every kind takes."""

    environment: dict[str, str] = field(default_factory=dict)  # variables for every command
    timeout: Optional[float] = None  # default per-command timeout, seconds
    # name -> an environment variable's name or a file: each command gets the variable NAME, masked in
    # everything the plugin writes (masking.py); an image build gets it as RUN --mount=type=secret,id=NAME.
    secrets: dict[str, str] = field(default_factory=dict)
    # bytes of each stream a command's Result holds: its head and tail past that, the whole in a file
    output_limit: int = OUTPUT_LIMIT

    def __post_init__(self) -> None:
        if self.output_limit < 1024:
            raise SettingError("output_limit", f"output_limit={self.output_limit} is below 1024 bytes; a Result "
                                               "must hold a failure's last lines (default 4194304)")
        for name in self.secrets:
            if not masking.NAME.match(name):
                raise SettingError("secrets", f"secrets name {name!r} is not a variable's name; use letters, digits "
                                              "and '_' (commands get it as $NAME, builds as --mount=type=secret,id=NAME)")


class SettingError(ConfigError):
    """A settings dataclass's own check (its __post_init__) refused `key`; merge() names the layer it came from."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


def known_keys(cls: type[CommonSettings]) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls))


# --- which kinds --------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    kinds: tuple[str, ...]
    explicit: bool  # named by the user: missing tooling is then an error, never a skip
    source: str

    def enabled(self, kind: str) -> bool:
        return kind in self.kinds


def parse_selection(text: Optional[str], source: str, known: tuple[str, ...],
                    available: Callable[[str], bool]) -> Selection:
    """`local,container` or `auto`; unknown names are a ConfigError naming the choices."""
    if not text or not text.strip():
        return Selection(DEFAULT_KINDS, explicit=False, source="default")
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if names == ["auto"]:
        return Selection(tuple(k for k in known if k == "local" or available(k)), explicit=False, source=source)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown kind {unknown[0]!r} in {source}; choose from {', '.join(known)} or auto")
    return Selection(tuple(dict.fromkeys(names)), explicit=True, source=source)


# --- layers -------------------------------------------------------------------
@dataclass(frozen=True)
class SettingsLayer:
    """One source of settings for one kind, with where its relative paths start."""

    values: Mapping[str, Any]
    base_dir: Path
    source: str


def load_config_file(path: Path, registry: Registry) -> dict[str, SettingsLayer]:
    """Parse buildenv.yaml: one mapping per kind. Keys and types are checked when the kind is used."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where} is not valid YAML ({problem}); "
                          "fix the file or point ini buildenv_config elsewhere") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror}); fix ini buildenv_config") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of kind sections (local:, container:, ...), got {type(data).__name__}")
    layers = {}
    for kind, values in data.items():
        if kind not in registry:
            raise ConfigError(f"{path}: unknown section {kind!r}; sections are {', '.join(registry.names)}")
        if not isinstance(values or {}, dict):
            raise ConfigError(f"{path}: section {kind!r} must be a mapping of settings")
        layer = layers[kind] = SettingsLayer(values or {}, path.parent, f"{path.name} section {kind!r}")
        cls = registry.spec(kind).settings
        for _, variant in matrix(cls, [layer]):  # every key and value (of each variant) checked now, not mid-run
            merge(cls, kind, [SettingsLayer({**layer.values, **variant}, layer.base_dir, layer.source)])
    return layers


def merge(cls: type[S], kind: str, layers: list[SettingsLayer]) -> S:
    """Fold the layers (weakest first) into the kind's settings dataclass, checking every value."""
    hints = typing.get_type_hints(cls)
    allowed = known_keys(cls)
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.values.items():
            if key not in hints:
                raise ConfigError(f"unknown keyword {key!r} in {layer.source}; {kind} takes {', '.join(allowed)}")
            values[key] = _coerce(value, hints[key], layer.base_dir, _failure(layer, key, value))
    try:
        return cls(**values)
    except SettingError as exc:  # the strongest layer naming the key is where the value came from
        source = next((layer.source for layer in reversed(layers) if exc.key in layer.values), "the defaults")
        raise ConfigError(f"{source}: {exc}") from None


def _failure(layer: SettingsLayer, key: str, value: Any) -> Fail:
    def fail(what: str) -> ConfigError:
        return ConfigError(f"{layer.source}: {key}={value!r} is not valid; {key} takes {what}")
    return fail


def matrix(cls: type[CommonSettings], layers: list[SettingsLayer]) -> list[tuple[str, dict[str, Any]]]:
    """The variants the layers ask for: the strongest layer naming a key decides whether it is a list
    of alternatives (a list where the field takes one value). [(test id part, values)]; [("", {})]: one."""
    hints = typing.get_type_hints(cls)
    axes: dict[str, list[tuple[str, Any]]] = {}
    for layer in layers:
        for key, value in layer.values.items():
            axes.pop(key, None)
            if isinstance(value, list) and key in hints and not _takes_many(hints[key]):
                axes[key] = [(_variant_id(v), _absolute(v, hints[key], layer.base_dir)) for v in value]
    if not axes:
        return [("", {})]
    keys = list(axes)
    return [("-".join(part for part, _ in combo), {k: v for k, (_, v) in zip(keys, combo)})
            for combo in itertools.product(*(axes[k] for k in keys))]


def _takes_many(hint: Any) -> bool:
    return any(typing.get_origin(h) in (tuple, list) for h in (hint, *typing.get_args(hint)))


def _absolute(value: Any, hint: Any, base_dir: Path) -> Any:
    """A path in a variant is resolved against the layer that named it (the variant is a layer of its own)."""
    takes_path = hint is Path or Path in typing.get_args(hint)
    return str((base_dir / value).resolve()) if takes_path and isinstance(value, (str, os.PathLike)) else value


def _variant_id(value: Any) -> str:
    """As the user wrote it: the image tag, the Dockerfile's path, NAME=value for a mapping."""
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


# --- checking one value by its field's type -------------------------------------
Fail = Callable[[str], ConfigError]


def _coerce(value: Any, hint: Any, base_dir: Path, fail: Fail) -> Any:
    """`value` as the field's type wants it, or `fail(what it should be)` raised."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        for option in options:
            try:
                return _coerce(value, option, base_dir, fail)
            except ConfigError:
                continue
        raise fail(" or ".join(_describe(o) for o in options))
    if origin is typing.Literal:
        if value in args:
            return value
        raise fail(_describe(hint))
    if origin in (dict, Mapping):
        return _mapping(value, args, fail)
    if origin is tuple:
        return _strings(value, fail)
    return _scalar(value, hint, base_dir, fail)


def _scalar(value: Any, hint: Any, base_dir: Path, fail: Fail) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif hint in (int, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if hint is float or float(value).is_integer():
                return hint(value)
        elif isinstance(value, str):
            try:
                return hint(value.strip())
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path and isinstance(value, (str, os.PathLike)) and str(value):
        return (base_dir / os.fspath(value)).resolve()
    raise fail(_describe(hint))


def _mapping(value: Any, args: tuple[Any, ...], fail: Fail) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(_describe(dict[str, str] if args and args[1] is str else dict))
    if args and args[1] is str:  # names to strings: scalars are written as the shell would see them
        if not all(isinstance(v, (str, int, float, bool)) for v in value.values()):
            raise fail("a mapping of names to strings")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    return {str(k): v for k, v in value.items()}


def _strings(value: Any, fail: Fail) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise fail("a string or a list of strings")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (dict, Mapping) or hint is dict:
        return "a mapping of names to strings" if args and args[1] is str else "a mapping"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
            Path: "a path (string)"}.get(hint, getattr(hint, "__name__", str(hint)))
