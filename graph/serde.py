"""The checkpoint serializer: LangGraph's msgpack format restricted to the graph's own state types.

A run directory is something users share, so `checkpoints.sqlite` is hostile input:
LangGraph's default serializer rebuilds any `module.name(args)` stored in it (it
only logs "Deserializing unregistered type"), which an edited checkpoint turns into
code execution on `--resume` or `--fork`. `StateSerde` writes the same msgpack, tagged
with the state schema's version, and before decoding anything walks every extension
object: only LangGraph's own control types (`Send`, `Command`, ...) and a few inert
value types pass; any other constructor, method call, pickle or JSON revival refuses
the whole checkpoint with `CheckpointRejected`, naming the file. The graph's state is
plain dicts, lists, strings, numbers, booleans and None (graph/state.py), so nothing
of ours needs more.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ormsgpack
from langgraph.checkpoint.serde import jsonplus as _jp
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from nncaption.netapi.errors import NNCaptionError
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

STATE_SCHEMA_VERSION = 1
TYPE_TAG = f"nncaption-state-v{STATE_SCHEMA_VERSION}"  # the `type` column of every checkpoint blob we write
LEGACY_TAG = "msgpack"  # checkpoints written before the tag (same bytes, same checks)
MAX_BLOB_BYTES = 64 << 20  # one checkpoint value; the state is small and bounded
MAX_DEPTH = 64  # nesting of extension objects (a Send inside a Command inside ...)

# (module, name) whose constructor may run while reading a checkpoint: LangGraph's control types, inert values.
ALLOWED_TYPES: frozenset[tuple[str, str]] = frozenset({
    ("langgraph.types", "Send"),
    ("langgraph.types", "Command"),
    ("langgraph.types", "Interrupt"),
    ("langgraph.types", "Overwrite"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("datetime", "datetime"),
    ("datetime", "timezone"),
    ("datetime", "timedelta"),
    ("uuid", "UUID"),
})
ALLOWED_METHODS: frozenset[tuple[str, str, str]] = frozenset({("datetime", "datetime", "fromisoformat")})
_CONSTRUCTORS = (_jp.EXT_CONSTRUCTOR_SINGLE_ARG, _jp.EXT_CONSTRUCTOR_POS_ARGS, _jp.EXT_CONSTRUCTOR_KW_ARGS)


class CheckpointRejected(NNCaptionError):
    """A checkpoint holds something the graph's state never contains (a call, a pickle): refused, never run."""

    category = "checkpoint"
    exit_code = 2


class _Refuse(Exception):
    """Raised inside the msgpack walk; turned into CheckpointRejected with the file's name."""


def _check_ext(code: int, data: bytes, found: list[str], depth: int = 0) -> None:
    """Walk one extension object without building anything; record why and raise for anything not allowed.

    (ormsgpack wraps an exception raised in an ext_hook, so the reason travels in `found`.)"""
    if depth > MAX_DEPTH:
        found.append("extension objects nested too deeply")
        raise _Refuse(found[-1])

    def hook(c: int, d: bytes) -> None:
        _check_ext(c, d, found, depth + 1)
        return None

    try:
        tup = ormsgpack.unpackb(data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
    except Exception as e:  # noqa: BLE001 - malformed bytes, whatever ormsgpack says
        if not found:
            found.append(f"a malformed extension object ({type(e).__name__})")
        raise _Refuse(found[0]) from None
    if code == _jp.EXT_DELTA_SNAPSHOT:
        return
    if not isinstance(tup, (list, tuple)) or len(tup) < 2 or not all(isinstance(x, str) for x in tup[:2]):
        found.append(f"a malformed extension object (code {code})")
        raise _Refuse(found[-1])
    module, name = tup[0], tup[1]
    if code in _CONSTRUCTORS and (module, name) in ALLOWED_TYPES:
        return
    if code == _jp.EXT_METHOD_SINGLE_ARG and len(tup) >= 4 and (module, name, str(tup[3])) in ALLOWED_METHODS:
        return
    what = f"{module}.{name}" + (f".{tup[3]}" if code == _jp.EXT_METHOD_SINGLE_ARG and len(tup) >= 4 else "")
    found.append(f"a serialized {what} (extension code {code})")
    raise _Refuse(found[-1])


def check_msgpack(data: bytes) -> None:
    """Raise _Refuse unless every extension object in `data` is an allowed type (nothing is constructed)."""
    if len(data) > MAX_BLOB_BYTES:
        raise _Refuse(f"a value of {len(data)} bytes (at most {MAX_BLOB_BYTES})")
    found: list[str] = []

    def hook(c: int, d: bytes) -> None:
        _check_ext(c, d, found)
        return None

    try:
        ormsgpack.unpackb(data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
    except Exception as e:  # noqa: BLE001
        raise _Refuse(found[0] if found else f"malformed msgpack ({type(e).__name__})") from None


class StateSerde(JsonPlusSerializer):
    """JsonPlusSerializer in strict mode, no pickle, and a checked, versioned read path.

    `source` names the checkpoint database in errors (the file a user must not trust).
    """

    def __init__(self, source: Path | str = "checkpoints.sqlite") -> None:
        super().__init__(pickle_fallback=False, allowed_json_modules=None, allowed_msgpack_modules=None)
        self.source = str(source)

    def _reject(self, why: str) -> CheckpointRejected:
        return CheckpointRejected(
            f"{safe_text(self.source, 500)} holds {safe_text(why, 300)}: the graph's state never does, so this "
            "checkpoint was edited or comes from elsewhere; nothing in it was run",
            "resume or fork only run directories you made or trust; start a new run otherwise")

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        type_, data = super().dumps_typed(obj)
        return (TYPE_TAG, data) if type_ == "msgpack" else (type_, data)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, raw = data
        if type_ in ("null", "bytes", "bytearray"):  # inert
            return super().loads_typed(data)
        if type_ in (TYPE_TAG, LEGACY_TAG):
            if not isinstance(raw, (bytes, bytearray, memoryview)):
                raise self._reject(f"a {type(raw).__name__} where msgpack bytes belong")
            try:
                check_msgpack(bytes(raw))
            except _Refuse as e:
                log.warning("refused checkpoint value in %s: %s", safe_text(self.source, 500), e)
                raise self._reject(str(e)) from None
            return super().loads_typed(("msgpack", raw))
        if isinstance(type_, str) and type_.startswith("nncaption-state-v"):
            raise CheckpointRejected(
                f"{safe_text(self.source, 500)} was written with state schema {safe_text(type_, 40)}; this version "
                f"reads {TYPE_TAG}", "resume it with the nn-caption version that made it, or start a new run")
        raise self._reject(f"a value of serialization type {safe_text(type_, 40)!r} (only {TYPE_TAG} is read)")
