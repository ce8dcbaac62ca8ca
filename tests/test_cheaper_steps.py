"""Issue 24, cheaper steps: each fast path gives what the path it shortcuts gives.

- protocol/wire.py decode: a map the fast path builds is the message _decode_map builds; a map
  it leaves alone (any fault) gets _decode_map's message or its exact error.
- runtime/fences.py: the flat reads answer as the numpy cells do, in range and out of it.
- runtime/memory.py census: the small range's Python tally is numpy's.
- runtime/runparams.py as_dict: made once, handed out as copies nobody can change it through.
- protocol compile_spec: an unchanged spec answers from its last key; a changed one is compiled
  again.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgpack
import numpy as np
import pytest

from protocol import wire
from runtime import memory
from runtime.fences import FIELDS, FORCED, SIGNALED, FenceTable, table_bytes
from runtime.runparams import RunParams


def _sample(cls: type) -> Any:
    """A valid message of `cls` (lists and records filled in)."""
    values: dict[str, Any] = {}
    hints = __import__("typing").get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if f.name == "id":
            values[f.name] = 7
        elif t is int:
            values[f.name] = 3
        elif t is str:
            values[f.name] = "x"
        elif t is bool:
            values[f.name] = True
        elif t is wire.Placement:
            values[f.name] = wire.Placement("vram", 0, 4096, 2)
        elif t == list[wire.HeapInfo]:
            values[f.name] = [wire.HeapInfo("vram", "dmabuf-x-vram", 4096)]
        elif t == list[wire.BufferInfo]:
            values[f.name] = [wire.BufferInfo(0, 4096)]
        else:
            raise AssertionError(f"no sample for {cls.__name__}.{f.name}: {t}")
    if cls is wire.InvalidateMappings:
        values["revoke"] = 0
    return cls(**values)


MESSAGES = [_sample(c) for c in (*wire.REQUESTS.values(), *wire.REPLIES.values())] + [
    wire.OkReply(id=4, op="detach"), wire.ErrorReply(id=5, op="map", code="busy", message="later")]


def _slow(frame: bytes) -> Any:
    """decode() with its fast path off: the message or the ProtocolError's (code, message, op, id)."""
    saved = wire._decode_valid
    wire._decode_valid = lambda raw, op: None  # type: ignore[assignment]
    try:
        return wire.decode(frame)
    except wire.ProtocolError as err:
        return (err.code, err.message, err.op, err.id)
    finally:
        wire._decode_valid = saved  # type: ignore[assignment]


def _fast(frame: bytes) -> Any:
    try:
        return wire.decode(frame)
    except wire.ProtocolError as err:
        return (err.code, err.message, err.op, err.id)


BAD_VALUES = [None, True, False, -1, 2**63, 1.5, "", "y" * (wire.MAX_STR + 1), [], {}, [1], {"a": 1}, b"\x00"]


def _mutants(raw: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for key in list(raw):
        cut = dict(raw)
        del cut[key]
        out.append(cut)
        for bad in BAD_VALUES:
            out.append({**raw, key: bad})
        if isinstance(raw[key], dict):
            for inner in list(raw[key]):
                out.append({**raw, key: {k: v for k, v in raw[key].items() if k != inner}})
                out.append({**raw, key: {**raw[key], inner: rng.choice(BAD_VALUES)}})
                out.append({**raw, key: {**raw[key], "extra": 1}})
    out.append({**raw, "extra": 1})
    out.append({**raw, "ok": True})
    out.append({**raw, "ok": False})
    out.append({**raw, "op": "no_such_op"})
    out.append({**raw, "v": 2})
    return out


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_decode_fast_path_matches_the_slow_one_on_valid_and_broken_maps(msg: Any) -> None:
    frame = wire.encode(msg)
    assert _fast(frame) == _slow(frame) == msg
    raw = msgpack.unpackb(frame, raw=False)
    rng = random.Random(type(msg).__name__)
    mutants = _mutants(raw, rng)
    assert len(mutants) > 10
    for m in mutants:
        f = msgpack.packb(m, use_bin_type=True)
        assert _fast(f) == _slow(f), m


def test_invalidate_mappings_rule_still_refuses_through_the_fast_path() -> None:
    frame = wire.encode(wire.InvalidateMappings(id=1, buffer=0, attachment=1, gen=1, move=0, revoke=0))
    got = _fast(frame)
    assert got == _slow(frame) and got[0] == wire.ErrorCode.BAD_MESSAGE and "exactly one" in got[1]


def test_fence_flat_reads_answer_as_the_numpy_cells() -> None:
    slots, buffers = 3, 2
    t = FenceTable(memoryview(bytearray(table_bytes(slots, buffers))), slots, buffers)
    rng = random.Random(5)
    for _ in range(300):
        s, b = rng.randrange(slots), rng.randrange(buffers)
        t.cells[s, b, rng.choice([SIGNALED, FORCED])] = rng.randrange(6)  # type: ignore[index]
        s, b, q = rng.randrange(-slots, slots + 1), rng.randrange(-buffers, buffers + 1), rng.randrange(7)
        cell = t.cells[s % slots, b % buffers] if 0 <= s < slots and 0 <= b < buffers else None  # type: ignore[index]
        if cell is None:
            continue
        assert t.is_signaled(s, b, q) == (max(int(cell[SIGNALED]), int(cell[FORCED])) >= q)
        assert t.signaled_by_device(s, b, q) == (int(cell[SIGNALED]) >= q)
    # an index numpy refuses is refused, not read from a neighbour
    with pytest.raises(IndexError):
        t.is_signaled(0, buffers, 1)
    with pytest.raises(IndexError):
        t.signaled_by_device(slots, 0, 1)
    assert FIELDS * slots * buffers * 8 + slots * 8 == table_bytes(slots, buffers)   # the cells, then the access counts
    t.release()
    assert t._flat is None and t.cells is None


def test_small_census_is_numpys() -> None:
    rng = random.Random(3)
    for _ in range(300):
        n = rng.choice([0, 1, 2, 5, 64, memory.SMALL_CENSUS])
        rows = np.zeros((n, memory.WORDS), dtype="<u4")
        for i in range(n):
            rows[i, :4] = [rng.choice([0, 1, 2**32 - 1]), rng.choice([i, i + 3, rng.randrange(2**32)]),
                           rng.choice([0, 5]), rng.choice([0, 7, 2**32 - 1])]
        first = rng.choice([0, 3])
        small = memory.census(rows, first)
        saved, memory.SMALL_CENSUS = memory.SMALL_CENSUS, -1
        try:
            assert small == memory.census(rows, first)
        finally:
            memory.SMALL_CENSUS = saved


def test_run_params_as_dict_is_made_once_and_handed_out_as_copies() -> None:
    p = RunParams(strategy="revoke", grants={"importer-1": [0, 1]},
                  faults=({"kind": "revoke", "target": "buffers", "at": 0.5, "for": None, "p": 1.0},))
    a = p.as_dict()
    a["grants"]["importer-1"].append(9)
    a["faults"][0]["at"] = 9.0
    a["buffers"] = -1
    b = p.as_dict()
    assert b == dataclasses.replace(p).as_dict()
    assert b["grants"] == {"importer-1": [0, 1]} and b["faults"][0]["at"] == 0.5 and b["buffers"] == p.buffers
    assert p.for_importer("importer-1")["grants"] == {"importer-1": [0, 1]}


def test_compile_spec_answers_an_unchanged_spec_and_recompiles_a_changed_one() -> None:
    from protocol.exporter import compile_spec
    from protocol.importer import compile_spec as compile_importer
    from protocol.strategies import resolve

    s = resolve("resv-fence")
    assert compile_spec(s.EXPORTER) is compile_spec(s.EXPORTER)
    assert compile_importer(s.IMPORTER) is compile_importer(s.IMPORTER)
    table = dict(s.EXPORTER.table)
    spec = dataclasses.replace(s.EXPORTER, table=table)
    first = compile_spec(spec)
    key, rules = next(iter(table.items()))
    del table[key]                 # the same spec object, changed: not the table it had
    try:
        second = compile_spec(spec)
    except Exception:
        second = None              # a table missing a row may be refused: either way not `first`
    assert second is not first
