"""Latency (batch 1 x 384, 2 threads, interleaved rounds) and EM/F1 (first 200 dev questions) of both exporters' graphs."""

import statistics
import sys
import time

import numpy as np

from edgeqa.bench.engines import load_qa_model
from edgeqa.bench.evaluate import evaluate

DEV = "/work/shared/data/squad/dev-v1.1.json.gz"
paths = {f"{k}/{v}": f"/tmp/tao/{k}/{v}" for v in sys.argv[2].split(",") for k in ("ts17", "dynamo18")}
if "--em" in sys.argv:
    for n, p in paths.items():
        m = evaluate(p, DEV, limit=200, threads=2, progress=False)
        print(f"{n}: EM {m['exact_match']:.2f} F1 {m['f1']:.2f} batch {m['batch_size']}")
engines = {n: load_qa_model(p, 2).engine for n, p in paths.items()}
rng = np.random.default_rng(0)
ids = rng.integers(1000, 20000, size=(1, 384), dtype=np.int64)
x = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
for e in engines.values():
    for _ in range(5):
        e(x)
rounds, per = int(sys.argv[1]), 5
times = {n: [] for n in engines}
for _ in range(rounds):
    for n, e in engines.items():
        for _ in range(per):
            t = time.perf_counter()
            e(x)
            times[n].append(1000 * (time.perf_counter() - t))
for n, ts in times.items():
    print(
        f"{n}: p50 {statistics.median(ts):.1f} ms p90 {statistics.quantiles(ts, n=10)[8]:.1f} min {min(ts):.1f} (n={len(ts)})"
    )
