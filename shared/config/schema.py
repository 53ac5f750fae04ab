"""What every config loader shares (pipeline, cluster, teacher, student): ConfigError,
merging a user's mapping over the defaults with unknown keys refused, dotted overrides,
reading a YAML file or an already parsed mapping, and resolving relative paths against
the repository root."""

from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]  # shared/config/schema.py -> the repository


class ConfigError(ValueError):
    """A config file has an unknown key, a wrong type or a bad value."""


def merge_checked(defaults: Any, user: Any, path: str = "") -> Any:
    """Overlay `user` on `defaults`, refusing keys that `defaults` does not have.

    Dicts with no keys in the defaults (e.g. `query`, `overrides`) accept anything."""
    if isinstance(defaults, dict) and defaults:
        if user is None:
            return copy.deepcopy(defaults)
        if not isinstance(user, dict):
            raise ConfigError(f"{path or '<root>'}: expected a mapping, got {type(user).__name__}")
        out = copy.deepcopy(defaults)
        for key, value in user.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in defaults:
                near = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ConfigError(f"{where}: unknown key{hint}")
            out[key] = merge_checked(defaults[key], value, where)
        return out
    if user is None:
        return copy.deepcopy(defaults)
    if isinstance(defaults, bool) and not isinstance(user, bool):
        raise ConfigError(f"{path}: expected true/false, got {user!r}")
    if isinstance(defaults, (int, float)) and not isinstance(defaults, bool):
        if isinstance(user, bool) or not isinstance(user, (int, float)):
            try:
                user = type(defaults)(user)
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: expected a number, got {user!r}") from None
        # NaN compares false with everything (a NaN threshold silently turns its check off);
        # an int too big for a float would overflow deep inside
        if (isinstance(user, float) and not math.isfinite(user)) or abs(user) > 1e300:
            raise ConfigError(f"{path}: expected a finite number, got {user!r}")
        if isinstance(defaults, float):
            return float(user)
        if isinstance(user, float):  # KFP passes dict parameters as JSON: 10 arrives as 10.0
            if not user.is_integer():
                raise ConfigError(f"{path}: expected a whole number, got {user!r}")
            return int(user)
        return user
    if isinstance(defaults, str) and not isinstance(user, str):
        raise ConfigError(f"{path}: expected text, got {user!r}")
    if isinstance(defaults, list) and not isinstance(user, list):
        raise ConfigError(f"{path}: expected a list, got {user!r}")
    return copy.deepcopy(user)


MAX_CONFIG_VALUES = 100_000


def _expanded_size(obj: Any, limit: int = MAX_CONFIG_VALUES) -> int:
    """How many values `obj` holds with every YAML alias expanded (counting stops past `limit`,
    so a self-referencing anchor or a billion-laughs file is cut short)."""
    n, stack = 0, [obj]
    while stack and n <= limit:
        o = stack.pop()
        n += 1
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return n


def read_config_source(source: str | Path | dict | None, what: str) -> Any:
    """A config given as a YAML file path or as an already parsed mapping."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.is_file():
            raise ConfigError(f"{what} not found: {source}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except (ValueError, RecursionError) as e:  # a 5000-digit number; nesting too deep to parse
            raise ConfigError(f"{source}: not usable YAML: {type(e).__name__}: {str(e)[:120]}") from None
        if _expanded_size(data) > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{source}: more than {MAX_CONFIG_VALUES} values once YAML aliases are "
                "expanded (recursive or exponential anchors)"
            )
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a {what} must be a mapping of sections, got {type(data).__name__}")
        return data
    return copy.deepcopy(source or {})


def merge_dotted(cfg: dict, overrides: dict | None) -> dict:
    """Apply {"section.key": value} overrides through merge_checked (so they are checked too)."""
    for dotted, value in (overrides or {}).items():
        node: Any = value
        for key in reversed(str(dotted).split(".")):
            node = {key: node}
        cfg = merge_checked(cfg, node)
    return cfg


def resolve_path(value: str, root: Path = REPO_ROOT) -> str:
    if not value or "://" in value or Path(value).is_absolute():
        return value
    return str((root / value).resolve())
