import json

import pytest

from schemas.contract import ContractViolation, ExtractMessage, check_structure, json_schemas
from tests.extract_factory import make_extract


def test_a_valid_extract_file_passes_the_structure_check():
    check_structure(make_extract(), whole_file=True)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("extract_id"), "extract_id"),
        (lambda d: d.update(urn=100001), "urn"),
        (lambda d: d.update(urn="10001"), "urn"),
        (lambda d: d.update(laestab="373200"), "laestab"),
        (lambda d: d.update(extract_date="17/11/2026"), "extract_date"),
        (lambda d: d.update(generated_at="2026-11-17T17:30:00"), "generated_at"),
        (lambda d: d.update(schema_version="2"), "schema_version"),
        (lambda d: d.update(pupil_count="3"), "pupil_count"),
        (lambda d: d.update(pupils={"a": 1}), "pupils"),
        (lambda d: d["pupils"].__setitem__(0, "x"), "pupils.0"),
        (lambda d: d["pupils"][1].update(sessions=None), "pupils.1.sessions"),
    ],
)
def test_structure_violations_name_the_field(mutate, field):
    document = make_extract()
    mutate(document)
    with pytest.raises(ContractViolation) as info:
        check_structure(document, whole_file=True)
    assert any(problem.startswith(field) for problem in info.value.problems), info.value.problems


def test_record_values_are_not_judged_by_the_structure_check():
    document = make_extract(codes=("??", "!"))
    document["pupils"][0]["upn"] = "not-a-upn"
    check_structure(document, whole_file=True)


def test_message_header_needs_chunk_fields():
    document = make_extract()
    with pytest.raises(ContractViolation) as info:
        check_structure(document, whole_file=False)
    assert any("chunk_index" in p for p in info.value.problems)


def test_json_schemas_export_and_describe_the_message():
    schemas = json_schemas()
    message = schemas["extract-message.v1.schema.json"]
    json.dumps(message)
    assert set(ExtractMessage.model_fields) <= set(message["properties"])
    assert "pupils" in message["required"]
