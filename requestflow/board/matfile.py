"""A reader for MATLAB 5 MAT-files (the ILSVRC2012 devkit's ``meta.mat``), with the standard library and numpy.

Enough of the format for the devkit: the 128-byte header, compressed (miCOMPRESSED, zlib) and plain data elements,
small data elements, and arrays of class double / single / integer, char and struct, and cell arrays. Values come
back as Python objects: a char array as a ``str`` (several rows: a list of them), a numeric array as a scalar when
it holds one value, else a list in MATLAB's column-major order, a struct array as a list of dicts (one per element,
column-major), a cell array as a list. Sparse, object and complex arrays are refused with a UserError, as is
anything malformed: this reads files a user names.

The format: MathWorks, "MAT-File Format", version 7 and earlier (the Level 5 format).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from requestflow.errors import UserError

MI_MATRIX, MI_COMPRESSED = 14, 15
NUMERIC = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
TEXT = {16: "utf-8", 17: "utf-16", 18: "utf-32"}
CELL, STRUCT, OBJECT, CHAR, SPARSE = 1, 2, 3, 4, 5
NUMERIC_CLASSES = set(range(6, 16))  # double, single, int8 .. uint64
COMPLEX_FLAG = 0x0800


def read(path: str | Path) -> dict:
    """The variables of the MAT-file ``path``: name -> value."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) < 128 or not data[:6] == b"MATLAB":
        raise UserError(f"{path}: not a MATLAB 5 MAT-file")
    if data[126:128] == b"IM":
        order = "<"
    elif data[126:128] == b"MI":
        order = ">"
    else:
        raise UserError(f"{path}: no endian indicator in the MAT-file header (a v7.3 HDF5 file?)")
    reader = _Reader(order, str(path))
    variables = {}
    offset = 128
    while offset < len(data):
        kind, payload, offset = reader.element(data, offset)
        if kind == MI_COMPRESSED:
            try:
                payload = zlib.decompress(payload)
            except zlib.error as exc:
                raise UserError(f"{path}: a compressed element is damaged ({exc})") from None
            kind, payload, _ = reader.element(payload, 0)
        if kind != MI_MATRIX:
            raise UserError(f"{path}: expected an array element, found element type {kind}")
        name, value = reader.matrix(payload)
        variables[name] = value
    return variables


class _Reader:
    def __init__(self, order: str, where: str) -> None:
        self.order = order
        self.where = where

    def fail(self, what: str):
        raise UserError(f"{self.where}: {what}")

    def element(self, data: bytes, offset: int) -> tuple[int, bytes, int]:
        """(type, payload, offset of the next element) of the data element at ``offset``."""
        if offset + 8 > len(data):
            self.fail("truncated data element")
        first, second = struct.unpack_from(self.order + "II", data, offset)
        if first >> 16:  # small data element: type and size in the first 4 bytes, the data in the next 4
            kind, size = first & 0xFFFF, first >> 16
            if size > 4:
                self.fail("malformed small data element")
            return kind, data[offset + 4:offset + 4 + size], offset + 8
        kind, size = first, second
        start = offset + 8
        if start + size > len(data):
            self.fail("truncated data element")
        end = start + size
        if kind != MI_COMPRESSED:
            end += -size % 8  # padded to 8 bytes
        return kind, data[start:start + size], end

    def elements(self, payload: bytes) -> list[tuple[int, bytes]]:
        found, offset = [], 0
        while offset < len(payload):
            kind, data, offset = self.element(payload, offset)
            found.append((kind, data))
        return found

    def numbers(self, kind: int, data: bytes) -> np.ndarray:
        if kind not in NUMERIC:
            self.fail(f"unexpected element type {kind} for numbers")
        return np.frombuffer(data, dtype=np.dtype(NUMERIC[kind]).newbyteorder(self.order))

    def matrix(self, payload: bytes) -> tuple[str, object]:
        """(name, value) of an miMATRIX element's payload."""
        if not payload:  # an empty array (e.g. an unset struct field)
            return "", None
        parts = self.elements(payload)
        if len(parts) < 3:
            self.fail("array element without flags, dimensions and name")
        (flags_kind, flags), (dims_kind, dims), (_, name) = parts[:3]
        flag_word = int(self.numbers(flags_kind, flags)[0])
        cls = flag_word & 0xFF
        shape = [int(d) for d in self.numbers(dims_kind, dims)]
        count = int(np.prod(shape)) if shape else 0
        rest = parts[3:]
        name = name.decode("ascii", "replace")
        if cls in (SPARSE, OBJECT) or flag_word & COMPLEX_FLAG:
            self.fail(f"array {name or '(unnamed)'}: sparse, object and complex arrays are not supported")
        if cls == CHAR:
            return name, self.chars(rest, shape)
        if cls in NUMERIC_CLASSES:
            values = self.numbers(*rest[0]).astype(float).tolist() if rest else []
            if len(values) != count:
                self.fail(f"array {name or '(unnamed)'}: {len(values)} values for dimensions {shape}")
            if cls not in (6, 7):  # integer classes stay integers
                values = [int(v) for v in values]
            return name, values[0] if count == 1 else values
        if cls == CELL:
            return name, [self.matrix(data)[1] for _, data in rest]
        if cls == STRUCT:
            return name, self.structs(rest, count, name)
        self.fail(f"array {name or '(unnamed)'}: unknown array class {cls}")

    def chars(self, parts: list[tuple[int, bytes]], shape: list[int]) -> str | list[str]:
        if not parts:
            return ""
        kind, data = parts[0]
        if kind in TEXT:
            text = data.decode(TEXT[kind] + ("-le" if self.order == "<" and kind != 16 else
                                              "-be" if kind != 16 else ""))
            codes = [ord(c) for c in text]
        else:
            codes = self.numbers(kind, data).astype(int).tolist()
        rows = shape[0] if shape else 1
        columns = len(codes) // rows if rows else 0
        # column-major: row r is codes[r], codes[r + rows], ...
        lines = ["".join(chr(codes[r + c * rows]) for c in range(columns)) for r in range(rows)]
        return lines[0] if rows == 1 else lines

    def structs(self, parts: list[tuple[int, bytes]], count: int, name: str) -> list[dict]:
        if len(parts) < 2:
            self.fail(f"struct {name or '(unnamed)'} without field names")
        (_, length_data), (_, names_data) = parts[:2]
        length = int(self.numbers(5, length_data[:4])[0])
        if length <= 0 or len(names_data) % length:
            self.fail(f"struct {name or '(unnamed)'}: malformed field names")
        fields = [names_data[i:i + length].split(b"\0", 1)[0].decode("ascii", "replace")
                  for i in range(0, len(names_data), length)]
        values = parts[2:]
        if len(values) != count * len(fields):
            self.fail(f"struct {name or '(unnamed)'}: {len(values)} field values for {count} x {len(fields)}")
        return [{field: self.matrix(values[i * len(fields) + j][1])[1] for j, field in enumerate(fields)}
                for i in range(count)]
