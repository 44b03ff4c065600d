"""The CRC32C of concatenated pieces from each piece's CRC32C and length.

The threads that compress a ray store's chunks checksum each chunk as they go; a store's checksum is made of its
columns' whole CRC32Cs, so that it does not depend on how the rays were cut into chunks. CRC32C is linear over
GF(2): crc(A B) = crc(A) x^(8 |B|) + crc(B) modulo its polynomial, as zlib's crc32_combine computes it.
Multiplying by a constant is a linear map of 32 bits, applied with four tables of 256 entries; the tables for
x^(8 2^k) are built on first use, so that combining costs a few table lookups per set bit of the length.
"""

from __future__ import annotations

import functools

#: The CRC32C (Castagnoli) polynomial, bit-reflected: bit 31 is the coefficient of x^0.
_POLY = 0x82F63B78
#: x^1, reflected.
_X = 1 << 30


def _multiply(a: int, b: int) -> int:
    """a(x) b(x) modulo the polynomial (both reflected)."""
    product, bit = 0, 1 << 31
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


@functools.cache
def _x_to_2_to(k: int) -> int:
    """x^(2^k) modulo the polynomial."""
    return _X if k == 0 else _multiply(_x_to_2_to(k - 1), _x_to_2_to(k - 1))


@functools.cache
def _times_x_to_8_2_to(k: int) -> tuple[list[int], ...]:
    """Four tables of 256 entries that multiply by x^(8 2^k), byte by byte of the other factor."""
    constant = _x_to_2_to(k + 3)
    tables = []
    for byte in range(4):
        images = [_multiply(constant, 1 << (8 * byte + i)) for i in range(8)]  # of each bit of the byte
        table = [0] * 256
        for v in range(1, 256):
            low = v & -v
            table[v] = table[v ^ low] ^ images[low.bit_length() - 1]
        tables.append(table)
    return tuple(tables)


def crc32c_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC32C of A followed by B from crc1 = crc32c(A), crc2 = crc32c(B) and B's length in bytes."""
    if length2 < 0:
        raise ValueError(f"crc32c_combine: a length of {length2} bytes")
    k = 0
    while length2:
        if length2 & 1:
            t0, t1, t2, t3 = _times_x_to_8_2_to(k)
            crc1 = t0[crc1 & 255] ^ t1[(crc1 >> 8) & 255] ^ t2[(crc1 >> 16) & 255] ^ t3[crc1 >> 24]
        length2 >>= 1
        k += 1
    return crc1 ^ crc2
