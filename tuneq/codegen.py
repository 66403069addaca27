"""Writes tuneq/models.py: a TypedDict per schema of the server's /openapi.json, so the client's types are the
server's own and a change on either side fails tests/cli/test_models.py until the file is regenerated
(`make models` does it from the server's code in this checkout; from a running service or a saved file):

    .venv/bin/python -m tuneq.codegen http://127.0.0.1:8000/openapi.json > tuneq/models.py
    .venv/bin/python -m tuneq.codegen openapi.json > tuneq/models.py
"""

from __future__ import annotations

import json
import keyword
import sys
from pathlib import Path
from typing import Any

HEADER = '''"""The API's schemas as TypedDicts. GENERATED from the server's /openapi.json by tuneq/codegen.py: do not edit;
regenerate with `python -m tuneq.codegen URL_OR_FILE > tuneq/models.py`."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict


'''
SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}


def annotation(schema: dict[str, Any]) -> str:
    """The Python type of a JSON schema, as source text."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    if "const" in schema:
        return f"Literal[{schema['const']!r}]"
    if "enum" in schema:
        return f"Literal[{', '.join(repr(v) for v in schema['enum'])}]"
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return " | ".join(dict.fromkeys(annotation(s) for s in schema[union]))
    kind = schema.get("type")
    if kind == "array":
        return f"list[{annotation(schema.get('items', {}))}]"
    if kind == "object" or "properties" in schema:
        extra = schema.get("additionalProperties")
        return f"dict[str, {annotation(extra)}]" if isinstance(extra, dict) and extra else "dict[str, Any]"
    if isinstance(kind, list):
        return " | ".join(SCALARS.get(k, "Any") for k in kind)
    return SCALARS.get(kind, "Any") if isinstance(kind, str) else "Any"


def typed_dict(name: str, schema: dict[str, Any]) -> str:
    """One schema as a TypedDict; fields the schema does not require are NotRequired."""
    required = set(schema.get("required", []))
    fields = [(field, annotation(sub) if field in required else f"NotRequired[{annotation(sub)}]")
              for field, sub in schema.get("properties", {}).items()]
    if not fields:
        return f"{name} = dict[str, Any]\n"
    if all(f.isidentifier() and not keyword.iskeyword(f) for f, _ in fields):
        body = "".join(f"    {f}: {t}\n" for f, t in fields)
        return f"class {name}(TypedDict):\n{body}"
    items = "".join(f"    {f!r}: {t!r},\n" for f, t in fields)  # field names Python cannot spell
    return f"{name} = TypedDict({name!r}, {{\n{items}}})\n"


def render(spec: dict[str, Any]) -> str:
    schemas = spec.get("components", {}).get("schemas", {})
    return HEADER + "\n\n".join(typed_dict(name, schemas[name]) for name in sorted(schemas))


def load(source: str) -> dict[str, Any]:
    if source.startswith(("http://", "https://")):
        import httpx

        return dict(httpx.get(source, timeout=30).raise_for_status().json())
    return dict(json.loads(Path(source).read_text()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tuneq.codegen URL_OR_FILE > tuneq/models.py")
    sys.stdout.write(render(load(sys.argv[1])))
