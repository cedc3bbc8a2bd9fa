"""FUZZ (bounded): hostile input to every dataset loader, by mutating copies of the real files.

Each test below is a hypothesis search over corruptions of one loader family -- Planetoid
pickles, heterophilous and gnn-benchmark npz, Twitch csv/json, an OGB csv.gz folder generated in
tmp -- and checks one contract on every example:

* loading either raises :class:`DatasetError` whose message names the dataset's file (for a
  corruption confined to one field, that file), or returns a Dataset that passes ``validate()``;
* never another exception type;
* never a hang or a slow example: each load runs under a SIGALRM limit of ``LIMIT_S`` seconds
  (a hypothesis ``deadline`` cannot stop a load that never returns; this can), with a
  faulthandler backstop that ends the process if a native loop ignores the signal;
* never code from a file: an audit hook, armed only during the load, fails the example on
  ``os.system``, ``subprocess.Popen``, ``os.exec*``/``spawn``/``fork`` or ``pickle.find_class``
  (an event only an *unrestricted* unpickler raises).

Bounded: ``FUZZ_EXAMPLES`` examples per test (default 30; ~15 s for the file on 2 idle cores,
well under 60 s on busy ones). ``APPROXGNN_FUZZ_EXAMPLES=2000`` turns it into a long hunt, and
``APPROXGNN_FUZZ_LIMIT_S=1`` makes it flag merely slow examples too.
The explicit malicious-pickle and wrong-directory cases at the end are ordinary tests.
"""
from __future__ import annotations

import copyreg
import faulthandler
import gzip
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from approxgnn.datasets import Dataset, DatasetError, load_dataset

pytestmark = pytest.mark.fuzz

FUZZ_EXAMPLES = int(os.environ.get("APPROXGNN_FUZZ_EXAMPLES", "30"))
LIMIT_S = float(os.environ.get("APPROXGNN_FUZZ_LIMIT_S", "5"))  # a clean load of any file here takes < 0.1 s

fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=False, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


# --------------------------------------------------------------------------- the contract

_FORBIDDEN_EVENTS = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                     "subprocess.Popen", "pickle.find_class", "ctypes.dlopen")
_audit = {"armed": False, "seen": []}


def _audit_hook(event: str, args: tuple) -> None:
    if _audit["armed"] and event.startswith(_FORBIDDEN_EVENTS):
        _audit["seen"].append(event)


sys.addaudithook(_audit_hook)  # permanent for the process (hooks cannot be removed); inert unless armed


class LoaderTimeout(BaseException):
    """A load ran past LIMIT_S. A BaseException while it unwinds the loader, so that no ``except
    Exception`` in there can swallow it; :func:`guarded` turns it into an AssertionError."""


@contextmanager
def guarded(limit_s: float = LIMIT_S) -> Iterator[None]:
    """Run the block under a wall-clock limit with the audit hook armed."""

    def on_alarm(signum, frame):  # noqa: ANN001
        raise LoaderTimeout(f"load did not finish within {limit_s} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    faulthandler.dump_traceback_later(12 * limit_s, exit=True)  # a native hang ignores SIGALRM
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    _audit["seen"].clear()
    _audit["armed"] = True
    try:
        yield
    except LoaderTimeout as e:  # now an ordinary failure, which hypothesis shrinks and reports
        raise AssertionError(str(e)) from None
    finally:
        _audit["armed"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)
    assert not _audit["seen"], f"loading ran forbidden operations: {_audit['seen']}"


def check_load(load: Callable[[], Dataset], names: list[str] | str) -> Dataset | None:
    """Apply the contract to one load; return the Dataset, or None when it was rejected.

    ``names``: strings of which the error message must contain at least one (file names).
    """
    names = [names] if isinstance(names, str) else names
    try:
        with guarded():
            ds = load()
    except DatasetError as e:
        assert any(n in str(e) for n in names), f"error does not name any of {names}: {e}"
        return None
    ds.validate()
    return ds


class Files(dict):
    """File name -> bytes, with a short repr (hypothesis prints a failing example's arguments)."""

    def __repr__(self) -> str:
        return f"Files({', '.join(f'{k}: {len(v)} B' for k, v in self.items())})"


class Blob(bytes):
    """A file's bytes, with a short repr."""

    def __repr__(self) -> str:
        return f"Blob({len(self)} B)"


class Arrays(dict):
    """Key -> array, with a short repr."""

    def __repr__(self) -> str:
        return f"Arrays({', '.join(f'{k}: {v.dtype}{list(v.shape)}' for k, v in self.items())})"


# --------------------------------------------------------------------------- byte mutations

# Tokens that stress parsers: separators, number edge cases, encodings, JSON syntax.
TOKENS = (b",", b"\n", b"\r\n", b" ", b"-1", b"0", b"1.5", b"nan", b"inf", b"-inf", b"1e999", b"2147483648",
          b"99999999999999999999", b"\x00", b"\xff\xfe", b'"', b"{", b"}", b"[", b"]", b"null", b"true", b"abc")


@dataclass(frozen=True)
class Mutation:
    """One edit of a byte string. ``pos`` >= 0 counts from the start, < 0 from the end; positions past
    the end wrap, so small positions hit headers, large ones anywhere."""

    kind: str  # flip | truncate | insert | delete | overwrite | empty
    pos: int = 0
    payload: bytes = b""

    def apply(self, data: bytes) -> bytes:
        n = len(data)
        if self.kind == "empty":
            return b""
        p = self.pos if 0 <= self.pos <= n else (n + self.pos if -n <= self.pos < 0 else self.pos % (n + 1))
        if self.kind == "truncate":
            return data[:p]
        if self.kind == "insert":
            return data[:p] + self.payload + data[p:]
        if self.kind == "delete":
            return data[:p] + data[p + len(self.payload):]
        if self.kind == "overwrite":
            return data[:p] + self.payload + data[p + len(self.payload):]
        if self.kind == "flip" and n:
            buf = bytearray(data)
            buf[min(p, n - 1)] ^= self.payload[0]
            return bytes(buf)
        return data


_pos = st.one_of(st.integers(0, 600), st.integers(-600, -1), st.integers(0, 1 << 31))
_garbage = st.one_of(st.sampled_from(TOKENS), st.binary(min_size=1, max_size=12))
mutation = st.one_of(
    st.builds(Mutation, st.just("flip"), _pos, st.integers(1, 255).map(lambda b: bytes([b]))),
    st.builds(Mutation, st.just("truncate"), _pos),
    st.builds(Mutation, st.just("insert"), _pos, _garbage),
    st.builds(Mutation, st.just("delete"), _pos, st.binary(min_size=1, max_size=64)),
    st.builds(Mutation, st.just("overwrite"), _pos, _garbage),
    st.just(Mutation("empty")),
)
mutations = st.lists(mutation, min_size=1, max_size=3)


def mutate(data: bytes, edits: list[Mutation]) -> bytes:
    for m in edits:
        data = m.apply(data)
    return data


def file_plan(names: list[str]) -> st.SearchStrategy:
    """What to do to a multi-file dataset: mutate one file, swap two, or remove one."""
    one = st.sampled_from(names)
    return st.one_of(
        st.tuples(st.just("mutate"), one, mutations),
        st.tuples(st.just("mutate"), one, mutations),  # twice as likely as the others
        st.tuples(st.just("swap"), one, one),
        st.tuples(st.just("remove"), one, st.just(None)),
    )


def apply_plan(files: dict[str, bytes], plan: tuple) -> dict[str, bytes | None]:
    action, target, arg = plan
    out: dict[str, bytes | None] = dict(files)
    if action == "mutate":
        out[target] = mutate(files[target], arg)
    elif action == "swap":
        out[target], out[arg] = files[arg], files[target]
    else:
        out[target] = None
    return out


def write_folder(folder: Path, files: dict[str, bytes | None]) -> Path:
    """Recreate ``folder`` holding ``files`` (relative path -> bytes; None = absent)."""
    shutil.rmtree(folder, ignore_errors=True)
    for rel, data in files.items():
        if data is not None:
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def read_folder(folder: Path, pattern: str = "*") -> Files:
    return Files({str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob(pattern)) if p.is_file()})


@pytest.fixture
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scratch folder per test, rewritten by every example."""
    return tmp_path_factory.mktemp("fuzz")


# --------------------------------------------------------------------------- structured array mutations

ARRAY_OPS = ("drop", "nan", "inf", "negative", "huge", "node_count", "fraction", "transpose", "flatten",
             "add_axis", "scalar", "empty", "shorter", "longer", "str", "bool", "complex", "uint64", "object",
             "timedelta", "zeros", "ones", "fortran", "big_endian", "other_key")


def mutate_array(arrays: dict[str, np.ndarray], key: str, op: str, at: int, n: int) -> None:
    """Apply structured mutation ``op`` to ``arrays[key]`` in place (``at`` picks an element/axis,
    ``n`` is the node count, for ids just out of range)."""
    a = arrays[key]
    ax = at % a.ndim if a.ndim else 0
    i = at % a.size if a.size else 0

    numeric = a.dtype.kind in "biuf"
    small = a if a.size <= 100_000 else a[:2]  # text/object copies of a big matrix would be huge

    def put(value, dtype) -> np.ndarray:  # noqa: ANN001
        if not a.size or not numeric:
            return a
        b = a.astype(dtype)
        b.flat[i] = value
        return b

    wide = np.float64 if np.issubdtype(a.dtype, np.floating) else np.int64
    new = {
        "drop": None,
        "nan": lambda: put(np.nan, np.float64),
        "inf": lambda: put(np.inf, np.float64),
        "negative": lambda: put(-1, wide),
        "huge": lambda: put(1 << 40, wide),
        "node_count": lambda: put(n, wide),
        "fraction": lambda: put(0.5, np.float64),
        "transpose": lambda: a.T,
        "flatten": lambda: a.ravel(),
        "add_axis": lambda: a[None],
        "scalar": lambda: np.asarray(a.flat[0] if a.size else 0),
        "empty": lambda: a[:0] if a.ndim else a,  # a 0-d array (after "scalar") has no length to cut
        "shorter": lambda: np.delete(a, -1, axis=ax) if a.ndim and a.shape[ax] else a,
        "longer": lambda: np.concatenate([a, np.take(a, [0], axis=ax)], axis=ax) if a.ndim and a.shape[ax] else a,
        "str": lambda: small.astype(str),
        "bool": lambda: a.astype(bool) if numeric else a,
        "complex": lambda: a.astype(np.complex64) + 1j if numeric else a,
        "uint64": lambda: a.astype(np.int64).astype(np.uint64) if numeric else a,
        "object": lambda: small.astype(object),  # saved as a pickle inside the npz; must be refused
        "timedelta": lambda: a.astype(np.int64).astype("m8[s]") if a.dtype.kind in "biu" else a,
        "zeros": lambda: np.zeros_like(a),
        "ones": lambda: np.ones_like(a),
        "fortran": lambda: np.asfortranarray(a),
        "big_endian": lambda: a.astype(a.dtype.newbyteorder(">")) if numeric else a,
        "other_key": lambda: next(v for k, v in sorted(arrays.items()) if k != key),
    }[op]
    if new is None:
        del arrays[key]
    else:
        with np.errstate(invalid="ignore"):  # e.g. NaN -> uint64: any value will do
            arrays[key] = new()


def array_edits(keys: list[str]) -> st.SearchStrategy:
    return st.lists(st.tuples(st.sampled_from(keys), st.sampled_from(ARRAY_OPS), st.integers(0, 1 << 20)),
                    min_size=1, max_size=3)


def apply_array_edits(arrays: dict[str, np.ndarray], edits: list[tuple], n: int) -> None:
    """Apply edits in order, skipping keys that are absent (already dropped)."""
    for key, op, at in edits:
        if key in arrays:
            mutate_array(arrays, key, op, at, n)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# --------------------------------------------------------------------------- Planetoid (pickles)

PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")


@pytest.fixture(scope="module")
def cora_files(shared_data: Path) -> dict[str, bytes]:
    return Files({f"ind.cora.{p}": (shared_data / "planetoid" / "raw" / f"ind.cora.{p}").read_bytes()
                  for p in PLANETOID_PARTS})


@fuzz
@given(plan=file_plan([f"ind.cora.{p}" for p in PLANETOID_PARTS]), by_name=st.booleans())
def test_fuzz_planetoid_bytes(cora_files: dict[str, bytes], work: Path, plan: tuple, by_name: bool) -> None:
    raw = write_folder(work / "planetoid" / "raw", apply_plan(cora_files, plan))
    load = (lambda: load_dataset("cora", root=work)) if by_name else (lambda: load_dataset(str(raw)))
    ds = check_load(load, str(raw))
    if ds is not None:
        assert ds.num_nodes >= 640  # 140 train + 500 val at least


def _pickled(obj: object) -> bytes:
    """Pickle modern numpy/scipy objects the way the restricted unpickler accepts (protocol 4)."""
    return pickle.dumps(obj, protocol=4)


@pytest.fixture(scope="module")
def cora_objects(cora_files: dict[str, bytes]) -> dict[str, object]:
    out = {}
    for p in ("x", "y", "tx", "ty", "allx", "ally", "graph"):
        with warnings.catch_warnings():  # the files name scipy.sparse.csr, a deprecated module path
            warnings.simplefilter("ignore", DeprecationWarning)
            obj = pickle.loads(cora_files[f"ind.cora.{p}"], encoding="latin1")  # trusted real file
        out[p] = sp.csr_matrix(obj) if sp.issparse(obj) else (dict(obj) if isinstance(obj, dict) else obj)
    return out


def _planetoid_edit(objs: dict[str, object], part: str, op: str, at: int) -> None:
    """Structured corruption of one Planetoid part (objects are copies; edit in place)."""
    o = objs[part]
    if part == "graph":
        nodes = sorted(o)
        node = nodes[at % len(nodes)]
        if op == "id_out_of_range":
            o[node] = [*o[node], 10**6]
        elif op == "negative_id":
            o[node] = [-1]
        elif op == "not_int":
            o[node] = ["a"]
        elif op == "huge_int":
            o[node] = [1 << 70]
        elif op == "not_a_dict":
            objs[part] = list(o.items())
        elif op == "drop_node":
            del o[node]
        else:  # "empty"
            objs[part] = {}
        return
    m = o.toarray() if sp.issparse(o) else np.asarray(o)
    if op == "drop_row":
        m = m[:-1]
    elif op == "extra_column":
        m = np.hstack([m, np.zeros((m.shape[0], 1), m.dtype)])
    elif op == "nan":
        m = m.astype(np.float32)
        m.flat[at % m.size] = np.nan
    elif op == "one_d":
        m = m.ravel()
    elif op == "int8":
        m = m.astype(np.int8)
    else:  # "empty"
        m = m[:0]
    objs[part] = sp.csr_matrix(m) if sp.issparse(o) and m.ndim == 2 else m


PLANETOID_OPS = {
    "graph": ("id_out_of_range", "negative_id", "not_int", "huge_int", "not_a_dict", "drop_node", "empty"),
    **dict.fromkeys(("x", "y", "tx", "ty", "allx", "ally"),
                    ("drop_row", "extra_column", "nan", "one_d", "int8", "empty")),
}


@fuzz
@given(part=st.sampled_from(sorted(PLANETOID_OPS)), data=st.data(), at=st.integers(0, 1 << 20))
def test_fuzz_planetoid_structured(cora_files: dict[str, bytes], cora_objects: dict[str, object], work: Path,
                                   part: str, data: st.DataObject, at: int) -> None:
    op = data.draw(st.sampled_from(PLANETOID_OPS[part]), label="op")
    objs = {k: (dict(v) if isinstance(v, dict) else v.copy()) for k, v in cora_objects.items()}
    _planetoid_edit(objs, part, op, at)
    files = dict(cora_files)
    files[f"ind.cora.{part}"] = _pickled(objs[part])
    raw = write_folder(work / "raw", files)
    ds = check_load(lambda: load_dataset(str(raw)), f"ind.cora.{part}")
    harmless = op == "int8" or (part == "graph" and op in ("drop_node", "empty"))  # still a valid graph
    assert (ds is not None) == harmless, f"{part}/{op} was {'accepted' if ds else 'rejected'}"


@fuzz
@given(text=st.text(alphabet="0123456789-+., \nex", max_size=60), keep=st.integers(0, 1000))
def test_fuzz_planetoid_test_index(cora_files: dict[str, bytes], work: Path, text: str, keep: int) -> None:
    lines = cora_files["ind.cora.test.index"].decode().splitlines()[:keep]
    files = {**cora_files, "ind.cora.test.index": ("\n".join(lines) + "\n" + text).encode()}
    raw = write_folder(work / "raw", files)
    check_load(lambda: load_dataset(str(raw)), "ind.cora.")


# --------------------------------------------------------------------------- heterophilous npz

@pytest.fixture(scope="module")
def texas(shared_data: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    path = shared_data / "heterophilous_graphs" / "texas.npz"
    with np.load(path) as npz:
        return Blob(path.read_bytes()), Arrays({k: npz[k] for k in npz.files})


@fuzz
@given(edits=mutations, by_name=st.booleans())
def test_fuzz_heterophilous_bytes(texas: tuple, work: Path, edits: list[Mutation], by_name: bool) -> None:
    path = work / "heterophilous_graphs" / "texas.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(mutate(texas[0], edits))
    check_load((lambda: load_dataset("texas", root=work)) if by_name else (lambda: load_dataset(str(path))),
               "texas.npz")


@fuzz
@given(edits=array_edits(["node_features", "node_labels", "edges", "train_masks", "val_masks", "test_masks"]),
       split=st.integers(0, 11))
def test_fuzz_heterophilous_structured(texas: tuple, work: Path, edits: list[tuple], split: int) -> None:
    arrays = dict(texas[1])
    apply_array_edits(arrays, edits, n=183)
    path = work / "texas.npz"
    save_npz(path, arrays)
    check_load(lambda: load_dataset(str(path), split=split), "texas.npz")


# --------------------------------------------------------------------------- gnn-benchmark npz

GNNB_KEYS = ["adj_data", "adj_indices", "adj_indptr", "adj_shape", "attr_data", "attr_indices", "attr_indptr",
             "attr_shape", "labels"]


@pytest.fixture(scope="module")
def gnnb_cora(shared_data: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    path = shared_data / "gnn_benchmark" / "cora.npz"
    with np.load(path) as npz:
        arrays = Arrays({k: npz[k] for k in npz.files if k in GNNB_KEYS})  # names are unused: keep it small
    dense = sp.csr_matrix((arrays["attr_data"], arrays["attr_indices"], arrays["attr_indptr"]),
                          shape=tuple(arrays["attr_shape"])).toarray()
    return Blob(path.read_bytes()), arrays, Arrays(attr_matrix=dense)


@fuzz
@given(edits=mutations)
def test_fuzz_gnn_benchmark_bytes(gnnb_cora: tuple, work: Path, edits: list[Mutation]) -> None:
    path = work / "gnn_benchmark" / "cora.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(mutate(gnnb_cora[0], edits))
    check_load(lambda: load_dataset("gnnb-cora", root=work), "cora.npz")


@fuzz
@given(edits=array_edits(GNNB_KEYS), dense=st.booleans())
def test_fuzz_gnn_benchmark_structured(gnnb_cora: tuple, work: Path, edits: list[tuple], dense: bool) -> None:
    arrays = dict(gnnb_cora[1])
    if dense:  # the other feature layout: one dense attr_matrix
        arrays = {k: v for k, v in arrays.items() if not k.startswith("attr_")} | gnnb_cora[2]
        # edits aimed at the attr_* pieces now hit nothing: aim the first at attr_matrix instead
        edits = [e for e in edits if e[0] in arrays] or [("attr_matrix", *edits[0][1:])]
    apply_array_edits(arrays, edits, n=2708)
    path = work / "g.npz"
    save_npz(path, arrays)
    check_load(lambda: load_dataset(str(path)), "g.npz")


# --------------------------------------------------------------------------- Twitch csv/json

TWITCH_FILES = ["PTBR_edges.csv", "PTBR.json", "PTBR_target.csv"]


@pytest.fixture(scope="module")
def ptbr(shared_data: Path) -> dict[str, bytes]:
    return read_folder(shared_data / "twitch" / "PTBR")


@fuzz
@given(plan=file_plan(TWITCH_FILES), by_name=st.booleans())
def test_fuzz_twitch_bytes(ptbr: dict[str, bytes], work: Path, plan: tuple, by_name: bool) -> None:
    folder = write_folder(work / "twitch" / "PTBR", apply_plan(ptbr, plan))
    load = (lambda: load_dataset("twitch-ptbr", root=work)) if by_name else (lambda: load_dataset(str(folder)))
    check_load(load, str(folder))


_json_values = st.one_of(st.just([-1]), st.just([10**7]), st.just([1.5]), st.just(["a"]), st.just({}),
                         st.just(None), st.just([[1]]), st.just(7), st.just([True]), st.just([1 << 70]),
                         st.lists(st.integers(-5, 4000), max_size=5))
_json_keys = st.one_of(st.just("abc"), st.just("-5"), st.just("1912"), st.just(" 3"), st.just("1e3"),
                       st.integers(0, 1911).map(str))


@fuzz
@given(edits=st.lists(st.tuples(_json_keys, _json_values), min_size=1, max_size=3), drop=st.integers(0, 50))
def test_fuzz_twitch_json_structured(ptbr: dict[str, bytes], work: Path, edits: list, drop: int) -> None:
    table = json.loads(ptbr["PTBR.json"])
    for key in list(table)[:drop]:
        del table[key]  # nodes without features are fine (all-zero rows)
    for key, value in edits:
        table[key] = value
    folder = write_folder(work / "PTBR", {**ptbr, "PTBR.json": json.dumps(table).encode()})
    check_load(lambda: load_dataset(str(folder)), "PTBR.json")


# --------------------------------------------------------------------------- OGB csv.gz folder

def _gz(rows: list[str]) -> bytes:
    return gzip.compress("".join(r + "\n" for r in rows).encode(), mtime=0)


@pytest.fixture(scope="module")
def ogb_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    n = 40
    labels = [str(v) for v in rng.integers(0, 3, size=n)]
    labels[5] = "nan"
    return Files({
        "raw/edge.csv.gz": _gz([f"{a},{b}" for a, b in rng.integers(0, n, size=(120, 2))]),
        "raw/node-feat.csv.gz": _gz([",".join(f"{v:.4f}" for v in row) for row in rng.standard_normal((n, 3))]),
        "raw/node-label.csv.gz": _gz(labels),
        "raw/num-node-list.csv.gz": _gz([str(n)]),
        "split/random/train.csv.gz": _gz([str(i) for i in range(0, 24)]),
        "split/random/valid.csv.gz": _gz([str(i) for i in range(24, 32)]),
        "split/random/test.csv.gz": _gz([str(i) for i in range(32, 40)]),
    })


@pytest.fixture(scope="module", autouse=True)
def _warm_up(request: pytest.FixtureRequest, ogb_files: Files, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Load every family once, unguarded: first use imports modules and loads numba's on-disk cache
    of the CSV kernels (one entry per output dtype) -- which unpickles and dlopens, legitimately."""
    load_dataset(str(write_folder(tmp_path_factory.mktemp("warm") / "ogbn_warm", ogb_files)))
    try:
        shared_data = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        return  # the tests that need the real files skip themselves
    for name in ("cora", "texas", "gnnb-cora", "twitch-ptbr"):
        load_dataset(name, root=shared_data)


@fuzz
@given(plan=file_plan(["raw/edge.csv.gz", "raw/node-feat.csv.gz", "raw/node-label.csv.gz", "raw/num-node-list.csv.gz",
                       "split/random/train.csv.gz", "split/random/valid.csv.gz", "split/random/test.csv.gz"]),
       in_text=st.booleans(), by_name=st.booleans())
def test_fuzz_ogb(ogb_files: dict[str, bytes], work: Path, plan: tuple, in_text: bool, by_name: bool) -> None:
    action, target, arg = plan
    if action == "mutate" and in_text:  # edit the CSV text, then compress: reaches the parser, not zlib
        files: dict[str, bytes | None] = dict(ogb_files)
        files[target] = gzip.compress(mutate(gzip.decompress(ogb_files[target]), arg), mtime=0)
    else:
        files = apply_plan(ogb_files, plan)
    folder = write_folder(work / "ogbn_fuzz", files)
    load = (lambda: load_dataset("ogbn-fuzz", root=work)) if by_name else (lambda: load_dataset(str(folder)))
    check_load(load, str(folder))


# --------------------------------------------------------------------------- malicious pickles

def _marker_cmd(marker: Path) -> bytes:
    return f"touch {marker}".encode()


SYSTEM = f"{os.system.__module__}.system"  # how os.system pickles: posix.system on Linux


def _evil_pickles(markers: Path) -> dict[str, tuple[bytes, str]]:
    """Hand-assembled pickles that run code through each opcode that resolves or calls a global:
    label -> (payload, what the refusal must name); payload ``label`` creates ``markers / label``."""
    out = {}

    def add(label: str, refused: str, build: Callable[[bytes, bytes, str], bytes]) -> None:
        marker = markers / label
        out[label] = build(_marker_cmd(marker), f"open({str(marker)!r}, 'w').close()".encode(), str(marker)), refused

    # GLOBAL + REDUCE (protocol 0), with the Python 2 module names too
    add("global_reduce", "os.system", lambda cmd, code, m: b"cos\nsystem\n(S'" + cmd + b"'\ntR.")
    add("global_reduce_posix", "posix.system", lambda cmd, code, m: b"cposix\nsystem\n(S'" + cmd + b"'\ntR.")
    add("builtins_eval", "builtins.eval", lambda cmd, code, m: b"cbuiltins\neval\n(S'" + code + b"'\ntR.")
    add("builtin_exec_py2", "__builtin__.exec", lambda cmd, code, m: b"c__builtin__\nexec\n(S'" + code + b"'\ntR.")
    add("getattr_import_chain", "builtins.getattr",
        lambda cmd, code, m: b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'"
                             + cmd + b"'\ntR.")
    # INST and OBJ call the class they name with the marked arguments
    add("inst", "os.system", lambda cmd, code, m: b"(S'" + cmd + b"'\nios\nsystem\n.")
    add("obj", "os.system", lambda cmd, code, m: b"(cos\nsystem\nS'" + cmd + b"'\no.")
    # STACK_GLOBAL (protocol 4), subprocess, and an exploit nested in a plausible adjacency dict
    add("stack_global", SYSTEM, lambda cmd, code, m: pickle.dumps(_Reduce(os.system, (cmd.decode(),)), protocol=4))
    add("subprocess", "subprocess.call",
        lambda cmd, code, m: pickle.dumps(_Reduce(subprocess.call, (["touch", m],)), protocol=4))
    add("nested_in_graph", SYSTEM,
        lambda cmd, code, m: pickle.dumps({0: [1], 1: _Reduce(os.system, (cmd.decode(),))}, protocol=2))
    # Not live on their own, but they name a dangerous global: NEWOBJ (calls cls.__new__) and a
    # persistent id (resolved by persistent_load, never by find_class)
    add("newobj", "subprocess.Popen",
        lambda cmd, code, m: b"\x80\x02csubprocess\nPopen\n]q\x00X\x05\x00\x00\x00touchq\x01a\x85\x81.")
    add("persid", "PERSID", lambda cmd, code, m: b"(S'" + cmd + b"'\ntP0\nPos.system\n.")
    return out


NOT_LIVE = {"newobj", "persid"}


class _Reduce:
    """Pickles as ``func(*args)``: the classic exploit."""

    def __init__(self, func: Callable, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self):  # noqa: ANN204
        return self.func, self.args


def test_the_malicious_pickles_are_live(tmp_path: Path) -> None:
    """Guard against a vacuous test: an ordinary unpickler, in a child process, runs them."""
    markers = tmp_path / "markers"
    markers.mkdir()
    payloads = _evil_pickles(markers)
    for label, (data, _) in payloads.items():
        (tmp_path / f"{label}.pkl").write_bytes(data)
    script = ("import pickle, sys, pathlib\n"
              "for p in sorted(pathlib.Path(sys.argv[1]).glob('*.pkl')):\n"
              "    try:\n        pickle.loads(p.read_bytes())\n    except Exception:\n        pass\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60, capture_output=True)
    assert {p.name for p in markers.iterdir()} == set(payloads) - NOT_LIVE


@pytest.mark.parametrize("part", ["x", "graph"])
def test_malicious_pickles_run_nothing(cora_files: dict[str, bytes], work: Path, tmp_path: Path, part: str) -> None:
    for label, (payload, refused) in _evil_pickles(tmp_path).items():
        raw = write_folder(work / "raw", {**cora_files, f"ind.cora.{part}": payload})
        with pytest.raises(DatasetError, match=rf"ind\.cora\.{part}: refusing .*{re.escape(refused)}"), guarded():
            load_dataset(str(raw))
        assert not (tmp_path / label).exists(), f"{label}: the pickle ran code"


def test_extension_registry_cannot_smuggle_a_global(cora_files: dict[str, bytes], work: Path, tmp_path: Path) -> None:
    """EXT1/2/4 opcodes resolve globals through copyreg's process-wide cache, which can bypass
    ``find_class`` entirely once any ordinary unpickler has resolved the code: refuse the opcodes."""
    marker = tmp_path / "pwned"
    code = 0x7FF1
    copyreg.add_extension("os", "system", code)
    try:
        pickle.loads(b"\x80\x02\x83" + code.to_bytes(2, "little") + b".")  # an ordinary unpickle caches os.system
        cmd = _marker_cmd(marker)
        evil = b"\x80\x02\x83" + code.to_bytes(2, "little") + b"X" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R."
        raw = write_folder(work / "raw", {**cora_files, "ind.cora.graph": evil})
        with pytest.raises(DatasetError, match=r"ind\.cora\.graph.*EXT2"), guarded():
            load_dataset(str(raw))
        assert not marker.exists()
    finally:
        copyreg.remove_extension("os", "system", code)


def test_restricted_unpickler_still_reads_real_files(shared_data: Path) -> None:
    with guarded():
        ds = load_dataset("citeseer", root=shared_data)
    assert ds.num_nodes == 3327


# --------------------------------------------------------------------------- not what the name says

def test_directories_that_are_not_what_the_name_says(shared_data: Path, ptbr: dict[str, bytes],
                                                    ogb_files: dict[str, bytes], tmp_path: Path) -> None:
    # A Twitch country folder without its edge list: by name and by path.
    folder = write_folder(tmp_path / "twitch" / "PTBR", {k: v for k, v in ptbr.items() if k != "PTBR_edges.csv"})
    with pytest.raises(DatasetError, match=r"PTBR_edges\.csv.*not found"):
        load_dataset("twitch-ptbr", root=tmp_path)
    with pytest.raises(DatasetError, match=rf"{folder}: unrecognised folder"):
        load_dataset(str(folder))
    # A Twitch folder with no csv at all, and a file where the folder should be.
    write_folder(folder, {"PTBR.json": ptbr["PTBR.json"]})
    with pytest.raises(DatasetError, match="PTBR"):
        load_dataset("twitch-ptbr", root=tmp_path)
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    with pytest.raises(DatasetError, match=r"PTBR: is not a directory"):
        load_dataset("twitch-ptbr", root=tmp_path)
    # An OGB folder without split/, with an empty split/, with a file for split/.
    ogb = write_folder(tmp_path / "ogbn_x", {k: v for k, v in ogb_files.items() if k.startswith("raw/")})
    with pytest.raises(DatasetError, match=r"ogbn_x/split: not found; expected an OGB split folder"):
        load_dataset("ogbn-x", root=tmp_path)
    (ogb / "split").mkdir()
    with pytest.raises(DatasetError, match=r"split: expected exactly one split type folder, found: none"):
        load_dataset(str(ogb))
    (ogb / "split").rmdir()
    (ogb / "split").write_text("")
    with pytest.raises(DatasetError, match=r"split: is not a directory"):
        load_dataset(str(ogb))
    # An OGB name whose folder holds something else (a Twitch country).
    write_folder(tmp_path / "ogbn_tw", ptbr)
    with pytest.raises(DatasetError, match=r"ogbn_tw/raw/edge\.csv\.gz: not found"):
        load_dataset("ogbn-tw", root=tmp_path)
    # A Planetoid name whose raw folder is a heterophilous npz, and an npz name that is a folder.
    (tmp_path / "planetoid").mkdir()
    shutil.copy(shared_data / "heterophilous_graphs" / "texas.npz", tmp_path / "planetoid" / "raw")
    with pytest.raises(DatasetError, match=r"ind\.cora\.x: not found"):
        load_dataset("cora", root=tmp_path)
    (tmp_path / "heterophilous_graphs" / "texas.npz").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"texas\.npz: is not a file"):
        load_dataset("texas", root=tmp_path)
    # A folder of Planetoid files of two datasets is ambiguous, an npz of another layout unrecognised.
    raw = tmp_path / "mixed"
    raw.mkdir()
    for name in ("cora", "citeseer"):
        shutil.copy(shared_data / "planetoid" / "raw" / f"ind.{name}.graph", raw)
    with pytest.raises(DatasetError, match="unrecognised folder"):
        load_dataset(str(raw))
    # An npz of the other layout under a registered name.
    shutil.copy(shared_data / "gnn_benchmark" / "cora.npz", tmp_path / "heterophilous_graphs" / "cornell.npz")
    with pytest.raises(DatasetError, match=r"cornell\.npz: missing key 'node_features'"):
        load_dataset("cornell", root=tmp_path)
    save_npz(tmp_path / "other.npz", {"weights": np.zeros(3)})
    with pytest.raises(DatasetError, match=r"other\.npz: unrecognised npz layout"):
        load_dataset(str(tmp_path / "other.npz"))
