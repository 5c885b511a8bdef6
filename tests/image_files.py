"""Image files written byte by byte, for what Pillow cannot write or what would cost too much memory to make with it:
16-bit RGB, tRNS on 16-bit grey, a 20000 x 20000 PNG of ~50 KB, a header that promises more than the data holds."""
from __future__ import annotations

import struct
import zlib

import numpy as np


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None = None,
              extra_chunks: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A PNG written chunk by chunk, for what Pillow cannot write (16-bit RGB, tRNS on 16-bit grey, huge sizes).
    `rows` is the raw scanline data (filter bytes included); None writes all-zero rows, compressed as a stream so a
    20000 x 20000 image costs a few MB of memory and a ~50 KB file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    if rows is None:
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
        row = bytes(1 + (width * channels * bit_depth + 7) // 8)
        deflate = zlib.compressobj(9)
        rows_z = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    else:
        rows_z = zlib.compress(rows)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(chunk(k, d) for k, d in extra_chunks)
            + chunk(b"IDAT", rows_z) + chunk(b"IEND", b""))


def rows16(values: np.ndarray) -> bytes:
    """Big-endian 16-bit samples [H, W(, C)] as PNG scanlines with filter type 0."""
    values = values.reshape(values.shape[0], -1).astype(">u2")
    return b"".join(b"\x00" + row.tobytes() for row in values)


def huge_png(path, width=20000, height=20000):
    path.write_bytes(png_bytes(width, height, 1, 0))
    return path


def truncated_png(path, width=9000, height=9000):
    """A valid header declaring width x height, then a broken data stream: only a header check can name its size."""
    data = png_bytes(64, 64, 8, 0)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    ihdr = struct.pack(">I", 13) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
    path.write_bytes(data[:8] + ihdr + data[8 + len(ihdr):])
    return path
