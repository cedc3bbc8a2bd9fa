"""Rows and bytes layer 0 reads in one epoch of mini-batches, plain against the precomputed first hop.

    python benchmarks/minibatch_precompute_bytes.py --json benchmarks/minibatch_precompute_bytes.json

A count, not a timing (no training: the sampler and the counted stores only), on
``synthetic-hard-1m`` with SAGE's mean aggregation, fanouts [15, 10, 5], batch 1024, epoch 0 of
seed 0 (the batches ``approxgnn train --engine sample`` draws). The precomputed table is built (or
found) beside the memory-mapped features, as float32 and as float16, and its cost is recorded.
"""
import argparse
import json
from pathlib import Path

import _common  # noqa: F401  (puts src/ on the path)
import numpy as np
import torch
from minibatch_vs_pyg import load
from approxgnn.graph import CSRGraph
from approxgnn.minibatch import ArrayFeatureStore, BatchLoader, NeighborSampler, first_hop_store
from approxgnn.minibatch.loader import epoch_seeds
from approxgnn.minibatch.sampler import batch_key
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--dataset", default="synthetic-hard-1m")
p.add_argument("--data-dir", default="/tmp/pygpeer")
p.add_argument("--json")
a = p.parse_args()
d = load(a.dataset, Path(a.data_dir))
g = CSRGraph.from_edge_index(d.edge_index, d.num_nodes)
train = np.flatnonzero(d.train_mask)
batches = epoch_seeds(train, 1024, 0, 0)
out = {"batches_per_epoch": len(batches)}
for name, fh, dtype in (("plain", False, None), ("precomputed", True, "float32"),
                        ("precomputed_float16", True, "float16")):
    store = ArrayFeatureStore(d.x)
    feats, table = (first_hop_store(g, store, "mean", dtype=dtype) if fh else (store, None))
    sampler = NeighborSampler(g, [15, 10, 5], "mean", first_hop=fh)
    loader = BatchLoader(sampler, feats, None, torch.device("cpu"))
    hops = []
    for b, seeds in enumerate(batches):
        batch = loader.load(seeds, batch_key(0, 0, b), 0)
        hops.append(batch.sample.nodes_per_hop())
    out[name] = {"bytes_per_epoch": feats.counters()["bytes_read"], "rows_per_epoch": feats.counters()["rows_read"],
                 "nodes_per_hop_mean": np.mean(hops, 0).round(1).tolist(),
                 "table": None if table is None else table.info()}
out["bytes_ratio"] = out["precomputed"]["bytes_per_epoch"] / out["plain"]["bytes_per_epoch"]
out["bytes_ratio_float16"] = out["precomputed_float16"]["bytes_per_epoch"] / out["plain"]["bytes_per_epoch"]
print(json.dumps(out, indent=1))
_common.write_json(a.json, out)
