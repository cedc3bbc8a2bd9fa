"""DiskFeatureStore: the same rows as the in-RAM store, the pages it really reads, its fallbacks."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch

from approxgnn.minibatch import ArrayFeatureStore, CachedFeatureStore, DiskFeatureStore, write_features
from approxgnn.minibatch.stores import degree_order

PAGE = 4096


def _file(tmp_path, n: int, f: int, seed: int = 0) -> tuple[np.ndarray, str]:
    x = np.random.default_rng(seed).standard_normal((n, f)).astype(np.float32)
    path = tmp_path / f"x{n}x{f}.npy"
    write_features(path, x)
    return x, str(path)


def _id_sets(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.integers(0, n, 3 * n),  # unsorted, many repeats
            rng.permutation(n)[: n // 3],  # distinct, unsorted
            np.array([n - 1, 0, n - 1, n - 1]),  # the last row, repeated
            np.array([], dtype=np.int64),
            np.arange(n)[::-1]]


@pytest.mark.parametrize("f", [7, 256, 1500])  # rows inside a page, exactly 1 KiB, straddling pages
@pytest.mark.parametrize("direct", [None, False])
def test_reads_equal_the_ram_store(tmp_path, f, direct):
    n = 1200
    x, path = _file(tmp_path, n, f)
    ram = ArrayFeatureStore(x)
    disk = DiskFeatureStore(path, threads=5, direct=direct, max_run_pages=3)
    rng = np.random.default_rng(1)
    for ids in _id_sets(n, rng):
        got = disk.read(ids)
        assert got.dtype == torch.float32 and got.shape == (len(ids), f)
        assert torch.equal(got, ram.read(ids))
    assert disk.rows_read == ram.rows_read and disk.bytes_read == ram.bytes_read
    assert disk.num_nodes == n and disk.dim == f and disk.on_disk
    assert torch.equal(disk.full(), torch.from_numpy(x))
    disk.close()


def test_counts_whole_pages_and_merges_adjacent_rows(tmp_path):
    n, f = 64, 256  # 1 KiB rows: four to a page, shifted by the .npy header
    x, path = _file(tmp_path, n, f)
    header = np.load(path, mmap_mode="r").offset
    disk = DiskFeatureStore(path, threads=4)

    def pages_of(rows):  # every page any of the rows touches, counted by hand from the offsets
        return {p for r in rows for p in range((header + r * 1024) // PAGE, (header + (r + 1) * 1024 - 1) // PAGE + 1)}

    disk.read(np.array([5]))
    assert (disk.disk_reads, disk.disk_bytes_read) == (1, len(pages_of([5])) * PAGE)
    before = disk.counters()
    rows = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 3])  # adjacent rows, unsorted, one repeat: one read
    disk.read(rows)
    assert disk.disk_reads - before["disk_reads"] == 1
    assert disk.disk_bytes_read - before["disk_bytes_read"] == len(pages_of(rows)) * PAGE
    before = disk.counters()
    far = np.array([0, 40, 63])  # pages apart: three reads
    disk.read(far)
    assert disk.disk_reads - before["disk_reads"] == 3
    assert disk.disk_bytes_read - before["disk_bytes_read"] == len(pages_of(far)) * PAGE
    assert disk.rows_read == 1 + len(rows) + len(far)
    state = disk.state_dict()
    other = DiskFeatureStore(path)
    other.load_state_dict(state)
    assert other.counters() == disk.counters()


def test_falls_back_when_o_direct_is_refused(tmp_path, monkeypatch):
    x, path = _file(tmp_path, 300, 33)
    real_open = os.open

    def refuse_direct(p, flags, *a):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")  # what tmpfs said before Linux 6.6
        return real_open(p, flags, *a)

    monkeypatch.setattr(os, "open", refuse_direct)
    disk = DiskFeatureStore(path, threads=3)
    assert not disk.direct
    ids = np.random.default_rng(0).integers(0, 300, 500)
    assert torch.equal(disk.read(ids), torch.from_numpy(x[ids]))
    monkeypatch.setattr(os, "open", real_open)
    # A descriptor that opens with O_DIRECT but refuses the reads: the probe sees it and falls back.
    monkeypatch.setattr(DiskFeatureStore, "_probe", lambda self, fd: False)
    disk = DiskFeatureStore(path)
    assert not disk.direct and torch.equal(disk.read(ids), torch.from_numpy(x[ids]))


def test_composes_under_the_feature_cache(tmp_path):
    n, f = 500, 16
    x, path = _file(tmp_path, n, f)
    rowptr = np.concatenate([[0], np.cumsum(np.random.default_rng(2).integers(0, 9, n))])
    disk = DiskFeatureStore(path, threads=4)
    cache = CachedFeatureStore(disk, degree_order(rowptr), torch.empty(100 * f))
    fill = disk.rows_read
    ids = np.random.default_rng(3).integers(0, n, 2000)
    assert torch.equal(cache.read(ids), torch.from_numpy(x[ids]))
    misses = disk.rows_read - fill
    assert cache.rows_served + misses == len(ids) and 0 < misses < len(ids)


def test_bad_files_and_ids_are_named(tmp_path):
    x, path = _file(tmp_path, 100, 8)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 10)
    with pytest.raises(ValueError, match=rf"{path}: truncated"):
        DiskFeatureStore(path)
    wide = tmp_path / "f64.npy"
    np.save(wide, x.astype(np.float64))
    with pytest.raises(ValueError, match="float32"):
        DiskFeatureStore(wide)
    _, good = _file(tmp_path, 100, 8, seed=1)
    with pytest.raises(IndexError, match="outside"):
        DiskFeatureStore(good).read(np.array([3, 100]))


def test_auto_memory_maps_a_file_that_fits_and_reads_a_larger_one_from_disk(tmp_path, monkeypatch):
    from approxgnn.train import minibatch as trainer_module

    path = tmp_path / "x.npy"
    np.save(path, np.ones((1000, 64), np.float32))  # 256 KB and a header
    size = path.stat().st_size
    monkeypatch.setattr(trainer_module, "available_bytes", lambda: 2 * size)  # fits in half: the page cache holds it
    assert not isinstance(trainer_module.open_store_file(path, "auto"), DiskFeatureStore)
    monkeypatch.setattr(trainer_module, "available_bytes", lambda: 2 * size - 2)  # does not
    assert isinstance(trainer_module.open_store_file(path, "auto"), DiskFeatureStore)
    monkeypatch.setattr(trainer_module, "available_bytes", lambda: None)  # unknown: the disk store, safe either way
    assert isinstance(trainer_module.open_store_file(path, "auto"), DiskFeatureStore)
    assert not isinstance(trainer_module.open_store_file(path, "mmap"), DiskFeatureStore)
    assert isinstance(trainer_module.open_store_file(path, "disk"), DiskFeatureStore)
