"""The spec reference: docs/spec-reference.md and docs/pipeline-spec.schema.json, generated from the pydantic models.

``python -m tasks spec-schema`` regenerates both (``--check``: exit 1 when the committed files are stale; a unit
test does the same). Every field gets its meaning (``Field(description=...)``, or the docstring of the block it
holds), its type, its default and an example: ``Field(examples=...)``, else the value a shipped spec under
``config/pipelines`` gives it, else its default.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tasks.spec import DEFAULT_PIPELINES_DIR, REPO_ROOT, PipelineSpec

DOC = REPO_ROOT / "docs" / "spec-reference.md"
SCHEMA = REPO_ROOT / "docs" / "pipeline-spec.schema.json"
_MISSING = object()


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models inside a field's annotation (through unions, lists and dict values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _dict_depth(annotation: Any) -> int:
    """How many mappings wrap the model in an annotation (``dict[str, dict[str, M]]``: 2)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict:
        return 1 + _dict_depth(args[1])
    return max((_dict_depth(a) for a in args), default=0)


def _type_name(annotation: Any) -> str:
    if annotation is None:  # a field whose forward reference pydantic has not resolved yet: never print "None[]"
        raise TypeError("a spec field has an unresolved type: define the names it uses before its model")
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    name = getattr(origin, "__name__", str(origin))
    return f"{name}[{', '.join(_type_name(a) for a in args)}]"


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return _MISSING
    else:
        value = field.default
    return (
        value.model_dump(mode="json", by_alias=True, exclude_defaults=True) if isinstance(value, BaseModel) else value
    )


def _shipped() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(DEFAULT_PIPELINES_DIR.glob("*.yaml"))]


def _lookup(raw: Any, path: list[str]) -> Any:
    """The value at ``path`` in a shipped spec (``*``: the first value of a mapping), or _MISSING."""
    for key in path:
        if not isinstance(raw, dict) or not raw:
            return _MISSING
        raw = next(iter(raw.values())) if key == "*" else raw.get(key, _MISSING)
        if raw is _MISSING:
            return _MISSING
    return raw


def _description(field: FieldInfo) -> str:
    if field.description:
        return " ".join(field.description.split())
    models = _models_in(field.annotation)
    return " ".join((models[0].__doc__ or "").split("\n\n")[0].split()) if models else ""


class _Row(typing.NamedTuple):
    key: str
    type: str
    default: Any
    description: str
    example: Any
    block: bool  # the field holds a block (or a mapping of blocks) documented in its own section


def _walk(
    model: type[BaseModel], path: list[str], shipped: list[dict[str, Any]], out: dict[str, tuple[str, list[_Row]]]
) -> None:
    """Document ``model`` (once, at its first path) and every block below it."""
    if model.__name__ in out:
        return
    rows: list[_Row] = []
    out[model.__name__] = (".".join(path) or "(top level)", rows)
    for name, field in model.model_fields.items():
        key = field.alias or name
        sub = [*path, key]
        block = bool(_models_in(field.annotation))
        example: Any = field.examples[0] if field.examples else _MISSING
        for raw in [] if block else shipped:
            if example is _MISSING:
                example = _lookup(raw, sub)
        default = _default(field)
        if example is _MISSING and default not in (_MISSING, None, {}, []) and not block:
            example = default
        rows.append(_Row(key, _type_name(field.annotation), default, _description(field), example, block))
        for nested in _models_in(field.annotation):
            _walk(nested, [*sub, *["*"] * _dict_depth(field.annotation)], shipped, out)


def reference() -> dict[str, tuple[str, list[_Row]]]:
    """Model name -> (its path in a spec, one row per field)."""
    out: dict[str, tuple[str, list[_Row]]] = {}
    _walk(PipelineSpec, [], _shipped(), out)
    return out


def _cell(value: Any, limit: int = 100) -> str:
    if value is _MISSING:
        return "*required*"
    text = json.dumps(value, ensure_ascii=False)
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return "`" + text.replace("|", "\\|") + "`"


def markdown() -> str:
    """docs/spec-reference.md."""
    lines = [
        "# Pipeline spec reference",
        "",
        "Generated from the pydantic models in `tasks/spec.py` by `python -m tasks spec-schema`; do not edit by hand",
        "(a unit test fails when it is stale). Editors: point YAML support at `docs/pipeline-spec.schema.json`",
        "(VS Code: `# yaml-language-server: $schema=../../docs/pipeline-spec.schema.json` on a spec's first line).",
        "`*` in a path stands for a key you choose (a column, a metric, a family).",
        "",
    ]
    for model_name, (path, rows) in reference().items():
        model = _model(model_name)
        lines += [f"## `{path}` ({model_name})", "", " ".join((model.__doc__ or "").split()), ""]
        lines += ["| field | type | default | meaning | example |", "|---|---|---|---|---|"]
        for row in rows:
            default = _cell(row.default)
            example = "a block: see below" if row.block else _cell(row.example)
            meaning = row.description.replace("|", "\\|")
            lines.append(f"| `{row.key}` | {row.type} | {default} | {meaning} | {example} |")
        lines.append("")
    return "\n".join(lines)


def _model(name: str) -> type[BaseModel]:
    found: dict[str, type[BaseModel]] = {}

    def collect(model: type[BaseModel]) -> None:
        if model.__name__ in found:
            return
        found[model.__name__] = model
        for field in model.model_fields.values():
            for nested in _models_in(field.annotation):
                collect(nested)

    collect(PipelineSpec)
    return found[name]


def json_schema() -> dict[str, Any]:
    """docs/pipeline-spec.schema.json: pydantic's schema, with each field's meaning and example filled in."""
    schema = PipelineSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ML lifecycle pipeline spec (config/pipelines/<name>.yaml)"
    defs = schema.get("$defs", {})
    for model_name, (_path, rows) in reference().items():
        target = schema if model_name == "PipelineSpec" else defs.get(model_name)
        if target is None:
            continue
        for row in rows:
            prop = target.get("properties", {}).get(row.key)
            if prop is None:
                continue
            if row.description and "description" not in prop:
                prop["description"] = row.description
            if row.example is not _MISSING and "examples" not in prop:
                prop["examples"] = [row.example]
    return schema


def write_reference(check: bool = False) -> list[str]:
    """Write both files (``check``: only compare); return the paths that changed (or are stale)."""
    wanted = {DOC: markdown() + "\n", SCHEMA: json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"}
    changed = []
    for path, text in wanted.items():
        if not path.is_file() or path.read_text() != text:
            changed.append(str(path.relative_to(REPO_ROOT)))
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return changed


def undocumented() -> list[str]:
    """Fields without a meaning or an example (a unit test keeps this empty)."""
    return [
        f"{path}.{row.key}: {'no meaning' if not row.description else 'no example'}"
        for path, rows in reference().values()
        for row in rows
        if not row.description or (row.example is _MISSING and not row.block)
    ]
