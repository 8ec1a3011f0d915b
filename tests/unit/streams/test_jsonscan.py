"""The contract's own JSON reader: what it reads equals Arrow's reader; what it is unsure of, it leaves."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.json as pj
import pytest

from streams.decode import _PARSE_OPTIONS, _RAW_MESSAGE
from streams.jsonscan import MAX_DEPTH, ContractReader, join_messages
from tests.extract_factory import make_extract

READER = ContractReader(_RAW_MESSAGE)

EXTRACT = make_extract(pupils=2)
PUPIL = EXTRACT["pupils"][0]
MARK = PUPIL["sessions"][1]  # code "\\": an escape in a contract field


def document(**overrides) -> dict:
    return {**EXTRACT, "chunk_index": 0, "chunk_count": 1, **overrides}


def compact(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def scan(messages: list[bytes]) -> tuple[pa.Table, list[int], list[int]]:
    buffer, bounds = join_messages(messages)
    table, positions, extras = READER.read(buffer, bounds, 0, len(messages))
    return table, positions.tolist(), extras.tolist()


def arrow(messages: list[bytes]) -> pa.Table:
    return pj.read_json(pa.BufferReader(b"\n".join(messages)), parse_options=_PARSE_OPTIONS)


READ = {
    "compact": compact(document()),
    "pretty": json.dumps(document(), indent=2).encode(),
    "ascii escapes outside the contract": json.dumps(document(note="Zoë 😀 \t tab")).encode(),
    "escapes in contract strings": compact(document(urn='10"0\\0/1\n')),
    "non-ASCII in a contract string": compact(document(laestab="80é2000")),
    "nulls and absent fields": compact({"urn": None, "pupils": [{"sessions": None}, {}]}),
    "empty lists and objects": compact({"pupils": [{"sessions": []}], "x": {}, "y": []}),
    "no pupils key": compact({"urn": "100001"}),
    "pupils null": compact({"urn": "100001", "pupils": None}),
    "negative and zero integers": compact(document(chunk_index=-0, pupil_count=-12)),
    "nested extras": compact(document(address={"line1": "1 High St", "town": None, "tags": [1, 2.5, [True]]})),
    "extras at every level": compact(document(pupils=[{**PUPIL, "forename": "Amelia", "sessions": [
        {**MARK, "note": "bus"}]}])),
}


@pytest.mark.parametrize("name", list(READ))
def test_what_it_reads_equals_arrows_reader(name):
    table, positions, _ = scan([READ[name]])
    assert positions == [0]
    assert table.to_pylist() == arrow([READ[name]]).to_pylist()
    assert table.schema == _RAW_MESSAGE


def test_a_batch_reads_in_order_with_every_message_equal_to_arrows():
    messages = list(READ.values())
    table, positions, _ = scan(messages)
    assert positions == list(range(len(messages)))
    assert table.to_pylist() == arrow(messages).to_pylist()


def test_extra_fields_are_counted_like_the_decoder():
    # note (1); address (1) + line1, tags (2) [town is null]; forename (1); mark note (1); nothing: null
    value = document(note="x", nothing=None, address={"line1": "1", "town": None, "tags": [{"a": 1}]})
    value["pupils"] = [{**PUPIL, "forename": "A", "sessions": [{**MARK, "note": 3}]}]
    bare = document(pupils=[{k: v for k, v in PUPIL.items() if k != "forename"}])
    _, _, extras = scan([compact(value), compact(bare), compact(document())])
    assert extras == [1 + 1 + 2 + 1 + 1 + 1, 0, 2]  # {"a": 1} inside tags counts its key; a forename each


LEFT = {
    "a number where a string is due": compact(document(urn=100001)),
    "a string where a boolean is due": compact(document(pupils=[{**PUPIL, "fsm_eligible": "Y"}])),
    "a fraction where an integer is due": compact(document(chunk_index=1.0)),
    "an exponent where an integer is due": b'{"chunk_index":1e3}',
    "an integer past 64 bits": compact(document(chunk_index=2**70)),
    "a leading zero": b'{"chunk_index":01}',
    "a \\u escape in a contract field": b'{"urn":"10000\\u0031"}',
    "a lone surrogate outside the contract": b'{"note":"\\ud800","urn":"1"}',
    "an invalid escape": b'{"note":"\\x"}',
    "a raw control character": b'{"urn":"1\x01"}',
    "a key twice": b'{"urn":"1","urn":"2"}',
    "a trailing comma in an object": b'{"urn":"1",}',
    "a trailing comma in a list": b'{"pupils":[{},]}',
    "a null pupil": compact(document(pupils=[PUPIL, None])),
    "pupils not a list": b'{"pupils":{}}',
    "NaN outside the contract": b'{"x":NaN}',
    "an exponent outside the contract": b'{"x":1e400}',
    "deep nesting outside the contract": b'{"x":' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}",
    "two values": compact(document()) + b" " + compact(document()),
    "not an object": b"[1]",
    "truncated": compact(document())[:-5],
}


@pytest.mark.parametrize("name", list(LEFT))
def test_what_it_is_unsure_of_is_left_to_the_other_paths(name):
    table, positions, _ = scan([READ["compact"], LEFT[name], READ["pretty"]])
    assert positions == [0, 2]
    assert table.to_pylist() == arrow([READ["compact"], READ["pretty"]]).to_pylist()


def test_mutated_messages_it_reads_are_strict_json_that_arrow_reads_alike():
    """Random byte edits of a message (a fixed seed): whatever the reader vouches for must be JSON orjson
    accepts, and Arrow's reader must give the same table for it."""
    import random

    import orjson

    rng = random.Random(20261206)
    base = compact(document(note={"a": [1, 2.5, None, True]}, pupils=[{**PUPIL, "forename": "Zoë"}]))
    alphabet = b'{}[],:"\\ \n0123456789-+.eEntrufalsx\x01\xc3'
    read = 0
    for _ in range(3000):
        mutant = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(mutant))
            edit = rng.random()
            if edit < 0.4:
                mutant[at] = rng.choice(alphabet)
            elif edit < 0.7:
                del mutant[at]
            else:
                mutant.insert(at, rng.choice(alphabet))
        message = bytes(mutant)
        try:
            message.decode("utf-8")
        except UnicodeDecodeError:
            continue  # the decoder rejects these before any reader sees them
        table, positions, _ = scan([message])
        if positions:
            read += 1
            orjson.loads(message)  # raises if the reader took something that is not JSON
            assert table.to_pylist() == arrow([message]).to_pylist(), message
    assert read > 300  # most single edits inside values still leave a readable message
