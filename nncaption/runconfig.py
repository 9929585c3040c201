"""The search run's configuration: a TOML file, overridden by flags, validated into `RunSettings`.

    seed = 0
    concurrency = 4
    [budget]            candidates = 50, wall_time_s = 3600, max_tokens = 2_000_000
    [agents]            kind = "llm", snippets = 10, llm_review = true
    [agents.llm.shared] base_url = "https://HOST/v1", model = "...", api_key_env = "MY_KEY_VAR"
    [agents.llm.fixer]  temperature = 0.2   (a role inherits every field it does not set)
    [train]             epochs = 5, max_train_batches = 200
    [data]              dataset = "coco", coco_root = "/data/coco"
    [sandbox]           kind = "docker", gpus = [0, 1, 2, 3]
    [policy]            p_debug = 0.3, p_improve = 0.6, max_debug_depth = 2

Secrets never live in the file or in the run directory: an endpoint names the
*environment variable* that holds its key (`api_key_env`). `masked()` is what is
printed and stored (anything secret-looking replaced by "***"). An invalid value
gives one `ConfigError` naming the key and the allowed values.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from nncaption.graph.settings import RunSettings
from nncaption.netapi.errors import ConfigError


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in (nested tables merged key by key)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


MAX_TOML_DEPTH = 32  # nesting of arrays and inline tables; a run's configuration needs three or four


def _too_deep(text: str, limit: int = MAX_TOML_DEPTH) -> int | None:
    """The line where arrays/inline tables nest deeper than `limit` (quoted strings skipped), else None.

    Linear, so a hostile file is refused before tomllib recurses into it."""
    depth, quote, line = 0, "", 1
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif ch == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j - 1
        elif ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            i += len(quote) - 1
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return line
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def load_toml(path: Path) -> dict[str, Any]:
    """The TOML file as a dict; ConfigError (exit 2) naming the line when missing, unreadable or not TOML."""
    hint = "fix the syntax at the reported line"
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", "pass the path of a TOML file to --config",
                          exit_code=2) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}", "check the path and its permissions",
                          exit_code=2) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"config file {path} is not UTF-8 text: line {line} has the byte 0x{raw[e.start]:02x}",
                          hint, exit_code=2) from None
    deep = _too_deep(text)
    if deep is not None:
        raise ConfigError(f"config file {path}: line {deep} nests arrays or tables more than {MAX_TOML_DEPTH} "
                          "levels deep", hint, exit_code=2)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}", hint, exit_code=2) from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply to read", hint, exit_code=2) from None


def _field_model(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the field at `loc` (for listing the allowed keys)."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return None
        ann = fields[part].annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def explain(e: ValidationError, model: type[BaseModel] = RunSettings) -> ConfigError:
    """One clear message for the first problem: the key, what is wrong, the allowed values or keys."""
    errors = e.errors()
    err = errors[0]
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        holder = _field_model(model, loc)
        allowed = ", ".join(sorted(holder.model_fields)) if holder else "see `nncaption config show`"
        msg = f"unknown key (allowed here: {allowed})"
    elif "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    more = f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} after this one)" if len(errors) > 1 \
        else ""
    return ConfigError(f"invalid config: {key}: {msg}{more}",
                       "fix that key in the --config file or the matching flag; `nncaption config show` prints "
                       "the resolved configuration")


def resolve(file_data: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> RunSettings:
    """Defaults <- the config file <- flag overrides, validated."""
    data = deep_merge(file_data or {}, overrides or {})
    try:
        return RunSettings.model_validate(data)
    except ValidationError as e:
        raise explain(e) from None


def masked(settings: RunSettings) -> dict[str, Any]:
    """The settings as JSON-able data with secret-looking values masked (what is printed and stored)."""
    return settings.masked_dump()


def show(settings: RunSettings) -> str:
    """`nncaption config show`: the resolved config as pretty JSON, secrets masked, key variables marked set/unset."""
    data = masked(settings)
    # Each role's endpoint as the run will use it: the shared one with the role's own fields laid over it.
    data["effective_endpoints"] = {role: ep.masked_dump() for role, ep in settings.agents.llm.resolved().items()}
    return json.dumps(data, indent=2, sort_keys=True)
