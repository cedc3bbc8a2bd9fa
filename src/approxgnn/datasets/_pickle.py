"""A restricted unpickler for the Planetoid ``ind.*`` files -- never runs arbitrary pickles.

A pickle can name any importable callable (``os.system``, ``builtins.eval``) and have the
unpickler call it. The Planetoid files only need numpy arrays, a scipy CSR matrix and a
``defaultdict(list)``, so :class:`RestrictedUnpickler` resolves exactly those names and refuses
every other one with a :class:`DatasetError` before anything is called.

Scipy matrices are not rebuilt from their pickled ``__dict__`` (that would let a file set any
attribute on a scipy object): the CSR name resolves to :class:`PickledCSR`, an inert record of
the state, which :func:`csr_to_dense` validates and converts.
"""
from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._io import fail, reading, require_file


class PickledCSR:
    """Inert stand-in for ``scipy.sparse.csr_matrix`` while unpickling: only stores the state."""

    # pickle creates it with ``__new__`` (no ``__init__``), then calls ``__setstate__``.
    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}


# numpy's array-reconstruction helper, found without importing the deprecated ``numpy.core``.
_NP_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]

# (module, name) as written in the pickle (Python 2 names included) -> object to use.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("scipy.sparse.csr", "csr_matrix"): PickledCSR,
    ("scipy.sparse._csr", "csr_matrix"): PickledCSR,
    ("collections", "defaultdict"): collections.defaultdict,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
}


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


def load_restricted(path: Path, what: str) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure is a DatasetError."""
    require_file(path, what)
    with reading(path, f"pickle ({what})"), open(path, "rb") as f:
        return RestrictedUnpickler(f, path).load()


def csr_to_dense(obj: Any, path: Path) -> np.ndarray:
    """Validate an unpickled CSR record (or a dense array) and return a dense float32 matrix."""
    if isinstance(obj, np.ndarray):
        dense = obj
    elif isinstance(obj, PickledCSR):
        st = getattr(obj, "state", {})
        shape = st.get("_shape", st.get("shape"))
        parts = [st.get(k) for k in ("data", "indices", "indptr")]
        if shape is None or any(not isinstance(p, np.ndarray) for p in parts):
            raise fail(path, "CSR matrix state lacks shape/data/indices/indptr")
        with reading(path, "CSR matrix"):
            mat = sp.csr_matrix(tuple(parts), shape=tuple(int(s) for s in shape))
            mat.check_format(full_check=True)  # rejects out-of-range column ids, bad indptr
            dense = mat.toarray()
    else:
        raise fail(path, f"expected a sparse or dense matrix, found {type(obj).__name__}")
    if dense.ndim != 2 or not (np.issubdtype(dense.dtype, np.number) or dense.dtype == np.bool_):
        raise fail(path, f"expected a 2-D numeric matrix, found {dense.dtype} of shape {dense.shape}")
    return np.ascontiguousarray(dense, dtype=np.float32)
