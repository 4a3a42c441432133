"""Load pod.toml plus ``POD_AGENT_*`` env vars into PodSettings, or fail with one clear line.

Owns reading the file, layering the environment over it (through the TOML source that
``PodSettings.settings_customise_sources`` installs), resolving relative paths against the
file's directory, and translating pydantic's ValidationError into a ConfigError that names
the dotted key, where the value came from, the bad value and the fix. The schema itself is
``settings.py``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from pod_agent.config.settings import ENV_NESTED_DELIMITER, ENV_PREFIX, RENAMED_KEYS, TOML_FILE, PodSettings
from pod_agent.errors import ConfigError

_EXAMPLE_HINT = "see config/pod.example.toml"


def load_settings(path: Path | None) -> PodSettings:
    """Read ``path`` (or only the environment when None) and validate it.

    Raises ConfigError whose message names the key, the file or env var, the value and the fix.
    """
    if path is not None:
        _check_readable_toml(path)
    token = TOML_FILE.set(path)
    try:
        settings = PodSettings()  # type: ignore[call-arg]  # required sections come from the sources
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc} - fix the syntax ({_EXAMPLE_HINT})") from exc
    finally:
        TOML_FILE.reset(token)
    return _resolve_paths(settings, base=path.parent.resolve() if path is not None else Path.cwd())


def _check_readable_toml(path: Path) -> None:
    if not path.exists():
        raise ConfigError(
            f"{path}: config file not found - create one with `pod-agent init` or pass --config"
        )
    if not path.is_file():
        raise ConfigError(f"{path}: config path is not a file - pass the pod.toml file itself")
    try:
        path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: config file unreadable ({exc.strerror}) - check its permissions"
        ) from exc


def _describe(exc: ValidationError, path: Path | None) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return _describe_one(first, path) + more


def _describe_one(error: ErrorDetails, path: Path | None) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "(top level)"
    origin = _origin(loc, path)
    kind = error["type"]
    if kind == "extra_forbidden" and key in RENAMED_KEYS:
        return f"{origin}: key {key!r} was renamed {RENAMED_KEYS[key]!r} - rename it there"
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        hint = f"known keys there: {', '.join(known)}" if known else _EXAMPLE_HINT
        return f"{origin}: unknown key {key!r} - remove it or fix its spelling ({hint})"
    if kind == "missing":
        return f"{origin}: required key {key!r} is missing - add it ({_EXAMPLE_HINT})"
    if kind == "value_error":
        message = error["msg"].removeprefix("Value error, ")
        return f"{origin}: {key}: {message} ({_EXAMPLE_HINT})"
    value = error.get("input")
    return (
        f"{origin}: {key} = {_short(value)} is invalid: {error['msg']}"
        f" - set a valid value ({_EXAMPLE_HINT})"
    )


def _origin(loc: list[str], path: Path | None) -> str:
    """The env var that supplied ``loc`` if one did, else the file."""
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + ENV_NESTED_DELIMITER.join(loc[:depth]).upper()
        if any(var.upper() == name for var in os.environ):
            return f"env {name}"
    return str(path) if path is not None else "environment"


def _known_keys(section_loc: list[str]) -> list[str]:
    model: type[BaseModel] = PodSettings
    for part in section_loc:
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _resolve_paths(settings: PodSettings, *, base: Path) -> PodSettings:
    """Relative paths in pod.toml mean relative to the file, not to wherever the agent starts."""

    def resolve(value: Path) -> Path:
        return value if value.is_absolute() else base / value

    pod = settings.pod.model_copy(
        update={
            "state_dir": resolve(settings.pod.state_dir),
            "identity_key": resolve(settings.pod.identity_key) if settings.pod.identity_key else None,
        }
    )
    hub = settings.hub.model_copy(
        update={"ca_bundle": resolve(settings.hub.ca_bundle) if settings.hub.ca_bundle else None}
    )
    datasource = settings.datasource.model_copy(update={"path": resolve(settings.datasource.path)})
    roster = settings.privacy.federation_roster
    privacy = settings.privacy.model_copy(update={"federation_roster": resolve(roster) if roster else None})
    return settings.model_copy(update={"pod": pod, "hub": hub, "datasource": datasource, "privacy": privacy})
