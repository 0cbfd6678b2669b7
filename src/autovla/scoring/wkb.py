"""Checking a WKB geometry's structure before shapely (GEOS) parses it.

GEOS parses WKB recursively and trusts declared counts: a GeometryCollection nested 200,000
deep crashes the process, a LineString declaring 2^31 points asks for 48 GB. Map layers and
metric caches hold only (multi)polygons and (multi)lines, so a walk over the headers and
counts, without building anything, can refuse the rest first.
"""

from __future__ import annotations

import struct

# WKB geometry type codes
LINES = frozenset({2, 5})  # LineString, MultiLineString
POLYGONS = frozenset({3, 6})  # Polygon, MultiPolygon
NAMES = {1: "Point", 2: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
         6: "MultiPolygon", 7: "GeometryCollection"}  # fmt: skip


class UnexpectedGeometry(ValueError):
    """A well-formed WKB geometry of a type the caller does not accept."""


def check_wkb(body: bytes, allowed: frozenset[int]) -> None:
    """Walk the structure of one ISO/extended WKB geometry without building it: its type must
    be in `allowed` (a Multi* may hold only its own simple type, so nesting is at most two
    deep), and every declared count must fit in the bytes that are there. Raises
    UnexpectedGeometry, or ValueError("unreadable WKB") for a malformed one."""
    view = memoryview(body)

    def header(pos: int) -> tuple[int, int, str, int]:
        if pos + 5 > len(view) or view[pos] not in (0, 1):
            raise ValueError("unreadable WKB")
        end = "<" if view[pos] == 1 else ">"
        (code,) = struct.unpack_from(end + "I", view, pos + 1)
        pos += 5
        dims = 2 + bool(code & 0x80000000) + bool(code & 0x40000000)  # EWKB Z / M flags
        if code & 0x20000000:  # EWKB SRID
            pos += 4
        code &= 0x0FFFFFFF
        kind, iso = code % 1000, code // 1000
        if iso > 3:
            raise ValueError("unreadable WKB")
        dims += (0, 1, 1, 2)[iso]
        return kind, pos, end, dims

    def count(pos: int, end: str, item_bytes: int) -> tuple[int, int]:
        if pos + 4 > len(view):
            raise ValueError("unreadable WKB")
        (n,) = struct.unpack_from(end + "I", view, pos)
        if n * item_bytes > len(view) - pos - 4:
            raise ValueError("unreadable WKB")
        return n, pos + 4

    def simple(kind: int, pos: int, end: str, dims: int) -> int:
        if kind == 2:
            n, pos = count(pos, end, 8 * dims)
            return pos + n * 8 * dims
        rings, pos = count(pos, end, 4)
        for _ in range(rings):
            n, pos = count(pos, end, 8 * dims)
            pos += n * 8 * dims
        return pos

    kind, pos, end, dims = header(0)
    if kind not in allowed:
        name = NAMES.get(kind, f"WKB type {kind}")
        expected = " or ".join(NAMES[k] for k in sorted(allowed))
        raise UnexpectedGeometry(f"{name} geometry (expected {expected})")
    if kind in (2, 3):
        pos = simple(kind, pos, end, dims)
    else:  # Multi*: parts of the simple type, each with its own header
        parts, pos = count(pos, end, 5)
        for _ in range(parts):
            part, pos, part_end, part_dims = header(pos)
            if part != kind - 3:
                name = NAMES.get(part, f"WKB type {part}")
                raise UnexpectedGeometry(f"{name} inside a {NAMES[kind]}")
            pos = simple(part, pos, part_end, part_dims)
    if pos != len(view):
        raise ValueError("unreadable WKB")
