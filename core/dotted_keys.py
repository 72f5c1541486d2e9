"""Setting a config key by dotted path (`svp … --set stages.video.optimizer.lr=3e-3`), checked against the
pydantic schema of the config before anything is validated.

One implementation for every config `svp` reads (curation config, thresholds, training pipeline, pipeline
file). It lives in `core/`, the bottom of the import chain, so that curation and training can both use it.
A key that the schema does not have is a one-line `UserError` naming the valid keys at that level; the
values themselves are left to the schema's validation (which reports them with the file and key).

Lists of mappings are addressed by index or by their `name` (`stages.video` or `stages.1`); `*` addresses
every item. Mappings of free keys (`scores.<column>`, `model.overrides.<key>`) take any key.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from core.errors import UserError

# A number as people write it; YAML 1.1 (PyYAML) reads `3e-3` as a string, since it wants a dot.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str) -> Any:
    """A `--set` value as a YAML scalar (`3`, `0.5`, `true`, `null`, `[1, 2]`), `3e-3` as a float."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER.fullmatch(text.strip()):
        return float(text)
    return value


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, schema: Any) -> None:
    """Set `dotted` in the raw (not yet validated) mapping `raw`, whose shape `schema` (a pydantic model or
    dataclass type) describes. Missing mappings on the way are created. Errors are `KEY: what is wrong`; the
    caller prefixes where the key came from."""
    parts = dotted.split(".")
    if not all(parts):
        raise UserError(f"{dotted}: empty key part")
    _set(raw, parts, value, schema, dotted, [])


def _set(node: Any, parts: list[str], value: Any, schema: Any, dotted: str, seen: list[str]) -> None:
    part, rest = parts[0], parts[1:]
    fields = _fields(schema)
    if fields is not None:
        if part not in fields:
            raise UserError(_unknown(dotted, seen, part, list(fields)))
        child_schema = fields[part]
    elif _origin(schema) is dict:
        child_schema = typing.get_args(_plain(schema))[1] if typing.get_args(_plain(schema)) else Any
    else:  # Any (free-form) below this point
        child_schema = Any
    if not isinstance(node, dict):
        raise UserError(f"{dotted}: {'.'.join(seen) or 'the top level'} is not a mapping")
    if not rest:
        node[part] = value
        return
    if _origin(child_schema) is list or isinstance(node.get(part), list):
        items = node.get(part)
        if not isinstance(items, list):
            raise UserError(f"{dotted}: {'.'.join([*seen, part])} is not a list in the config")
        item_schema = (
            typing.get_args(_plain(child_schema))[0] if typing.get_args(_plain(child_schema)) else Any
        )
        for item in _list_items(items, rest[0], dotted, [*seen, part]):
            if len(rest) == 1:
                raise UserError(f"{dotted}: give a key inside {'.'.join([*seen, part, rest[0]])}")
            _set(item, rest[1:], value, item_schema, dotted, [*seen, part, rest[0]])
        return
    child = node.setdefault(part, {})
    if child is None:
        child = node[part] = {}
    _set(child, rest, value, child_schema, dotted, [*seen, part])


def _list_items(items: list[Any], ref: str, dotted: str, seen: list[str]) -> list[Any]:
    """The items `ref` names: `*` (all), an index, or the `name` of a mapping in the list."""
    if ref == "*":
        return items
    if ref.isdigit() and int(ref) < len(items):
        return [items[int(ref)]]
    named = [item for item in items if isinstance(item, dict) and item.get("name") == ref]
    if named:
        return named
    names = [str(item["name"]) for item in items if isinstance(item, dict) and "name" in item]
    choices = ", ".join(names) if names else f"0-{len(items) - 1}"
    raise UserError(f"{dotted}: {'.'.join(seen)} has no item {ref!r} (give an index, a name or *: {choices})")


def _unknown(dotted: str, seen: list[str], part: str, valid: list[str]) -> str:
    where = ".".join(seen) if seen else "the top level"
    close = difflib.get_close_matches(part, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{dotted}: unknown key {part!r}{hint}; keys of {where}: {', '.join(sorted(valid))}"


def _fields(schema: Any) -> dict[str, Any] | None:
    """Field name → annotation of a pydantic model or dataclass type, else None."""
    schema = _plain(schema)
    fields = getattr(schema, "__pydantic_fields__", None) if isinstance(schema, type) else None
    if fields is None:
        return None
    return {name: info.annotation for name, info in fields.items()}


def _plain(annotation: Any) -> Any:
    """`X | None` and `Optional[X]` as X (the config's YAML may leave the key out)."""
    if _is_union(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return annotation


def _origin(annotation: Any) -> Any:
    return typing.get_origin(_plain(annotation))


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)
