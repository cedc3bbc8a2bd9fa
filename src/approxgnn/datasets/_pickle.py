"""A restricted unpickler for the Planetoid ``ind.*`` files -- never runs arbitrary pickles.

A pickle can name any importable callable (``os.system``, ``builtins.eval``) and have the
unpickler call it. The Planetoid files only need numpy arrays, scipy CSR matrices and a
``defaultdict(list)``, so :class:`RestrictedUnpickler` resolves exactly those names and refuses
every other one with a :class:`DatasetError` before anything is called.

``find_class`` is not the only way a pickle can reach a global: the EXT1/EXT2/EXT4 opcodes look
names up in :mod:`copyreg`'s process-wide extension registry, and a code already resolved once
(by any ordinary unpickler in the process) comes from a cache without ``find_class`` being
asked. :func:`load_restricted` therefore scans the opcodes first and refuses those, and the
persistent-id ones, before unpickling. The same scan bounds the memo indices: the C unpickler
sizes its memo table by the largest index it is given, so five corrupted bytes
(``LONG_BINPUT 0x7fffffff``) would otherwise make it allocate and clear gigabytes (a fuzz test
found a 100M-entry memo, 1.7 s and 800 MB, from one deleted byte run).

Even the allowed names do not reach numpy or scipy: they resolve to inert records
(:class:`PickledArray`, :class:`PickledDType`, :class:`PickledCSR`) that only store what the file
says. :func:`to_array` and :func:`to_dense` then validate those records (numeric dtype, sizes
that match the shape) and build the arrays with ``np.frombuffer`` and scipy's public
constructor. This matters: numpy's own ``ndarray.__setstate__`` fed a corrupted state can fail
with internal errors, which a fuzz test found.
"""
from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._io import fail, reading, require_file


class _Record:
    """Base of the inert stand-ins: pickle creates them and hands them their state, nothing more."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class PickledDType(_Record):
    """Stand-in for ``numpy.dtype``: args ``('f4', 0, 1)``, state ``(3, '<', ...)``."""


class PickledArray(_Record):
    """Stand-in for a numpy array: state ``(version, shape, dtype, fortran, raw bytes)``."""


class PickledCSR(_Record):
    """Stand-in for ``scipy.sparse.csr_matrix``: state is its ``__dict__`` (data, indices, ...)."""


def _reconstruct(*args: Any) -> PickledArray:
    """Stand-in for numpy's ``_reconstruct(ndarray, (0,), b'b')``: an empty record."""
    return PickledArray(*args)


def _new_dict(*args: Any) -> dict:
    """Stand-in for ``collections.defaultdict(list)``: a plain dict (no factory to call later)."""
    return {}


# (module, name) as written in the pickle (Python 2 names included) -> object to use.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): PickledArray,
    ("numpy", "dtype"): PickledDType,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("scipy.sparse.csr", "csr_matrix"): PickledCSR,
    ("scipy.sparse._csr", "csr_matrix"): PickledCSR,
    ("collections", "defaultdict"): _new_dict,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
}

_MAX_DENSE = 1 << 28  # Planetoid matrices hold ~10M entries; a corrupt shape must not allocate GBs
_DTYPE_CODE = re.compile(r"^[biuf][1248]$")  # bool, signed, unsigned, float of 1-8 bytes


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED``; ``path`` is used in errors."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 pickles hold byte strings
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise fail(
                self._path,
                f"refusing to unpickle {module}.{name}: only numpy arrays, scipy CSR matrices "
                "and dict-of-lists graphs are allowed in Planetoid files",
            ) from None


# Opcodes that resolve an object without RestrictedUnpickler.find_class: refused outright.
_FORBIDDEN_OPCODES = frozenset({"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"})
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def load_restricted(path: Path, what: str) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure is a DatasetError."""
    require_file(path, what)
    # A corrupt STRING opcode can hold invalid escapes, which both parsers warn about.
    with reading(path, f"pickle ({what})"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        data = path.read_bytes()  # Planetoid files are small; a declared length never over-reads
        for opcode, arg, pos in pickletools.genops(data):
            if opcode.name in _FORBIDDEN_OPCODES:
                raise fail(path, f"refusing pickle opcode {opcode.name} at byte {pos}: it resolves objects "
                                 "outside the allowed numpy/scipy/dict types")
            if opcode.name in _MEMO_PUTS and arg > len(data):  # picklers number memo entries from 0
                raise fail(path, f"pickle memo index {arg} at byte {pos} is implausible for a {len(data)}-byte file")
        return RestrictedUnpickler(io.BytesIO(data), path).load()


def _dtype(rec: Any, path: Path) -> np.dtype:
    """A numeric numpy dtype from a :class:`PickledDType` record."""
    if not isinstance(rec, PickledDType) or not rec.args or not isinstance(rec.args[0], str):
        raise fail(path, "array dtype is not a plain numeric dtype")
    code = rec.args[0]
    state = getattr(rec, "state", None)
    order = state[1] if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|") else "="
    if not _DTYPE_CODE.match(code):
        raise fail(path, f"unsupported array dtype {code!r} (expected a bool, integer or float type)")
    return np.dtype(code).newbyteorder(order) if order in "<>" else np.dtype(code)


def to_array(rec: Any, path: Path) -> np.ndarray:
    """A numpy array from a :class:`PickledArray` record, checking dtype and byte count."""
    state = getattr(rec, "state", None)
    if not isinstance(rec, PickledArray) or not isinstance(state, tuple) or len(state) != 5:
        raise fail(path, f"expected a pickled numpy array, found {type(rec).__name__}")
    _version, shape, dtype_rec, fortran, raw = state
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise fail(path, f"array shape {shape!r} is not a tuple of sizes")
    dtype = _dtype(dtype_rec, path)
    if isinstance(raw, str):
        raw = raw.encode("latin1")  # a Python 2 str, decoded by encoding='latin1'
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize * math.prod(shape):
        raise fail(path, f"array data does not match shape {shape} and dtype {dtype}")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return arr.astype(dtype.newbyteorder("="))  # native byte order, writeable copy


def to_dense(rec: Any, path: Path) -> np.ndarray:
    """A dense, finite float32 matrix from a pickled CSR record or a pickled 2-D array."""
    if isinstance(rec, PickledCSR):
        st = getattr(rec, "state", None)
        if not isinstance(st, dict):
            raise fail(path, "CSR matrix state is not a dict")
        shape = st.get("_shape", st.get("shape"))
        if not isinstance(shape, tuple) or len(shape) != 2 or not all(isinstance(s, int) for s in shape):
            raise fail(path, f"CSR matrix shape {shape!r} is not a pair of sizes")
        if not 0 <= shape[0] * shape[1] <= _MAX_DENSE:
            raise fail(path, f"CSR matrix shape {shape} is implausible for a Planetoid file")
        parts = [to_array(st.get(k), path) for k in ("data", "indices", "indptr")]
        with reading(path, "CSR matrix"):
            mat = sp.csr_matrix(tuple(parts), shape=shape)
            mat.check_format(full_check=True)  # rejects out-of-range column ids, bad indptr
            dense = mat.toarray()
    else:
        dense = to_array(rec, path)
    if dense.ndim != 2:
        raise fail(path, f"expected a 2-D matrix, found shape {dense.shape}")
    out = np.ascontiguousarray(dense, dtype=np.float32)
    if not np.isfinite(out).all():  # features and one-hot labels alike
        raise fail(path, "matrix holds NaN or inf (or values beyond the float32 range)")
    return out
