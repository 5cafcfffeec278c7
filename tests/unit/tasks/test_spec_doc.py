from __future__ import annotations

import json

from tasks.spec_doc import json_schema, undocumented, write_reference


def test_committed_reference_and_schema_equal_a_fresh_generation():
    assert write_reference(check=True) == [], "stale: run `python -m tasks spec-schema`"


def test_every_field_has_a_meaning_and_an_example():
    assert undocumented() == []


def test_the_json_schema_describes_the_shipped_specs():
    import jsonschema
    import yaml

    from tasks.spec import DEFAULT_PIPELINES_DIR

    schema = json_schema()
    assert schema["properties"]["schema"]["$ref"].endswith("SchemaSpec")
    columns = schema["$defs"]["SchemaSpec"]["properties"]["columns"]
    assert "category" in json.dumps(columns) and columns["description"]
    for path in sorted(DEFAULT_PIPELINES_DIR.glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
