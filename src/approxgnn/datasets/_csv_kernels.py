"""numba kernels that parse comma-separated numbers from a byte buffer (used by ``_csv``).

Kept apart so that importing the package does not import numba; ``_csv.read_csv`` loads this
module on first use. Compiled functions are cached on disk (``cache=True``).
"""
from __future__ import annotations

import numba
import numpy as np

# Status codes returned by the kernels (0 = fine).
MESSAGES = {
    1: "expected a number",
    2: "wrong number of comma-separated fields",
    3: "expected an integer",
    4: "integer out of the int64 range",
}

POW10 = np.array([10.0**k for k in range(23)], dtype=np.float64)  # exactly representable


@numba.njit(cache=True, nogil=True)
def _field(buf, i, n):
    """Scan one number starting at ``buf[i]``.

    Returns ``(next_i, ok, negative, mantissa, exp10, digits, special)`` where the value is
    ``(-1)**negative * mantissa * 10**exp10``; ``digits`` counts mantissa digits kept (for the
    integer overflow check, -1 if digits were dropped); ``special`` is 1 for nan, 2 for inf and
    3 when the field had a fraction or exponent (not an integer).
    """
    while i < n and (buf[i] == 32 or buf[i] == 9):
        i += 1
    neg = False
    if i < n and (buf[i] == 45 or buf[i] == 43):  # '-' or '+'
        neg = buf[i] == 45
        i += 1
    # nan / inf / infinity, any case
    if i < n and (buf[i] | 32) == 110:  # 'n'
        if i + 2 < n and (buf[i + 1] | 32) == 97 and (buf[i + 2] | 32) == 110:
            return i + 3, True, neg, 0, 0, 0, 1
        return i, False, neg, 0, 0, 0, 0
    if i < n and (buf[i] | 32) == 105:  # 'i'
        if i + 2 < n and (buf[i + 1] | 32) == 110 and (buf[i + 2] | 32) == 102:
            i += 3
            if i + 4 < n and (buf[i] | 32) == 105 and (buf[i + 1] | 32) == 110 and (buf[i + 2] | 32) == 105 \
                    and (buf[i + 3] | 32) == 116 and (buf[i + 4] | 32) == 121:
                i += 5
            return i, True, neg, 0, 0, 0, 2
        return i, False, neg, 0, 0, 0, 0
    mant = 0
    exp10 = 0
    digits = 0
    any_digit = False
    special = 0
    while i < n and 48 <= buf[i] <= 57:
        any_digit = True
        if digits < 18:
            mant = mant * 10 + (buf[i] - 48)
            if mant > 0:
                digits += 1
        else:
            exp10 += 1  # drop the digit, keep the magnitude
            digits = 19
        i += 1
    if i < n and buf[i] == 46:  # '.'
        special = 3
        i += 1
        while i < n and 48 <= buf[i] <= 57:
            any_digit = True
            if digits < 18:
                mant = mant * 10 + (buf[i] - 48)
                exp10 -= 1
                if mant > 0:
                    digits += 1
            i += 1
    if not any_digit:
        return i, False, neg, 0, 0, 0, 0
    if i < n and (buf[i] | 32) == 101:  # 'e' / 'E'
        special = 3
        i += 1
        eneg = False
        if i < n and (buf[i] == 45 or buf[i] == 43):
            eneg = buf[i] == 45
            i += 1
        if i >= n or not (48 <= buf[i] <= 57):
            return i, False, neg, 0, 0, 0, 0
        e = 0
        while i < n and 48 <= buf[i] <= 57:
            if e < 100000:
                e = e * 10 + (buf[i] - 48)
            i += 1
        exp10 += -e if eneg else e
    return i, True, neg, mant, exp10, digits, special


@numba.njit(cache=True, nogil=True)
def _end_of_field(buf, i, n):
    """Skip trailing blanks; return (index, terminator) with 0 = ',', 1 = end of line, 2 = other."""
    while i < n and (buf[i] == 32 or buf[i] == 9 or buf[i] == 13):
        i += 1
    if i >= n or buf[i] == 10:
        return i + 1, 1
    if buf[i] == 44:
        return i + 1, 0
    return i, 2


@numba.njit(cache=True, nogil=True)
def _blank_line(buf, i, n):
    """If the line at ``i`` is blank, return the index after it, else -1."""
    j = i
    while j < n and (buf[j] == 32 or buf[j] == 9 or buf[j] == 13):
        j += 1
    if j >= n or buf[j] == 10:
        return j + 1
    return -1


@numba.njit(cache=True, nogil=True)
def parse_block(buf, out, ncols, integer, pow10):
    """Parse complete lines of ``ncols`` comma-separated numbers from ``buf`` into flat ``out``.

    Returns ``(values_written, lines_consumed, status)``; on error ``lines_consumed`` is the
    0-based line of the error and ``status`` a key of ``MESSAGES``.
    """
    n = buf.shape[0]
    i = 0
    k = 0
    line = 0
    while i < n:
        j = _blank_line(buf, i, n)
        if j >= 0:  # blank lines (and a final newline) carry no row
            i = j
            line += 1
            continue
        col = 0
        while True:
            i, ok, neg, mant, exp10, digits, special = _field(buf, i, n)
            if not ok:
                return k, line, 1
            if integer:
                if special != 0:
                    return k, line, 3
                if digits > 18:
                    return k, line, 4
                out[k] = -mant if neg else mant
            else:
                if special == 1:
                    v = np.nan
                elif special == 2:
                    v = np.inf
                else:
                    v = float(mant)
                    if 0 <= exp10 <= 22:
                        v = v * pow10[exp10]
                    elif -22 <= exp10 < 0:
                        v = v / pow10[-exp10]
                    elif mant != 0:
                        v = v * 10.0**exp10
                if neg:
                    v = -v
                out[k] = v
            k += 1
            col += 1
            i, term = _end_of_field(buf, i, n)
            if term == 2:
                return k, line, 1
            if term == 1:
                if col != ncols:
                    return k, line, 2
                line += 1
                break
            if col >= ncols:
                return k, line, 2
    return k, line, 0
