"""src/berth/lane/canon.h, the fast lane's fingerprint in C, against berth's own (orjson with
sorted keys, services/proxy_keys.py): byte for byte on generated documents written in
several styles, and Python's to handle (RELAY) exactly where it says so."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from berth.services.proxy_keys import fingerprint
from tests.unit.test_bench_floor import BENCH

CHARS = (
    [chr(c) for c in range(0x20, 0x7F)]
    + ["\x00", "\x01", "\x08", "\t", "\n", "\x0c", "\r", "\x1f", "\x7f", '"', "\\", "/"]
    + ["é", "ß", "中", "\u2028", "\ufeff", "\uffff", "😀", "\U0010ffff", "ÿ"]
)
PLAIN_KEY = [c for c in CHARS if c >= " " and c not in '"\\']  # keys berth's C orders itself


def _canon(tmp: Path, lines: list[bytes], *args: str) -> list[bytes]:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (scripts/test installs it)")
    exe = tmp / "canon"
    src = str(BENCH.parent / "src" / "berth" / "lane" / "canon.h")
    subprocess.run(["gcc", "-O2", "-DCANON_MAIN", "-x", "c", "-o", str(exe), src], check=True)
    out = subprocess.run(
        [str(exe), *args], input=b"\n".join(lines) + b"\n", capture_output=True, check=True
    ).stdout
    got = out.split(b"\n")[:-1]
    assert len(got) == len(lines)
    return got


def _text(r: random.Random, pool: list[str]) -> str:
    return "".join(r.choice(pool) for _ in range(r.randint(0, 8)))


def _value(r: random.Random, depth: int = 0) -> Any:
    kind = r.randint(0, 9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return r.choice([True, False])
    if kind == 2:
        return r.choice([0, 1, -1, 7, -42, 10**17, -(10**18) + 1, 999_999_999_999_999_999])
    if kind in (3, 4, 5):
        return _text(r, CHARS)
    if kind in (6, 7):
        return [_value(r, depth + 1) for _ in range(r.randint(0, 4))]
    return {_text(r, PLAIN_KEY): _value(r, depth + 1) for _ in range(r.randint(0, 5))}


def _styles(v: Any) -> list[bytes]:
    """The same value as different callers write it (one line each)."""
    return [
        orjson.dumps(v),
        json.dumps(v).encode(),  # every non-ASCII as \\u escapes, surrogate pairs included
        json.dumps(v, ensure_ascii=False).encode(),
        json.dumps(v, ensure_ascii=False, separators=(" , ", " :\t")).encode(),
    ]


def test_canonical_form_is_orjsons_sorted_form_byte_for_byte(tmp_path: Path) -> None:
    r = random.Random(14)
    values = [_value(r) for _ in range(600)]
    lines = [line for v in values for line in _styles(v)]
    got = _canon(tmp_path, lines)
    for line, out in zip(lines, got, strict=True):
        assert out == orjson.dumps(orjson.loads(line), option=orjson.OPT_SORT_KEYS), line


def test_params_hash_to_berths_fingerprint(tmp_path: Path) -> None:
    r = random.Random(3)
    docs = [
        {"jsonrpc": "2.0", "id": i, "method": "message/send", "params": _value(r)}
        for i in range(300)
    ] + [{"jsonrpc": "2.0", "id": 1, "method": "tasks/get"}]
    lines = [json.dumps(d, ensure_ascii=bool(i % 2)).encode() for i, d in enumerate(docs)]
    got = _canon(tmp_path, lines, "params")
    for d, out in zip(docs, got, strict=True):
        if "params" not in d:
            assert out == b"NONE"
        else:
            assert hashlib.sha256(out).hexdigest() == fingerprint(d["params"])


@pytest.mark.parametrize(
    "doc",
    [
        b'{"a": 1.5}',  # a float: Python prints it
        b'{"a": 1e3}',
        b'{"a": -0}',
        b'{"a": 1234567890123456789}',  # 19 digits
        b'{"a": 1, "a": 2}',  # a duplicate key
        b'{"a\\"b": 1}',  # a key with an escape: sorted on its character
        b'{"a\\u0001": 1}',
        b'"\\ud800"',  # a lone surrogate
        b'"\\udc00x"',
        b'"\xed\xa0\x80"',  # a surrogate in UTF-8
        b'"\xc0\xaf"',  # an overlong
        b'"\xff"',
        b'"a\tb"',  # a raw control character
        b"{'a': 1}",
        b'{"a": 1,}',
        b"[1, 2",
        b"01",
        b"NaN",
        b'{"a": 1} x',
        b"[" * 70 + b"]" * 70,  # deeper than CANON_DEPTH
        b"",
    ],
)
def test_what_is_pythons_to_handle_is_relayed(tmp_path: Path, doc: bytes) -> None:
    assert _canon(tmp_path, [doc]) == [b"RELAY"]
