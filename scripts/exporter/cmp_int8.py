"""fp32 vs torch.ao dynamic int8 vs torchao Int8DynamicActivationInt8WeightConfig on the teacher (2 threads)."""

import statistics
import sys
import time

import numpy as np
import torch
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

from edgeqa.bench.engines import load_qa_model, predict
from edgeqa.bench.metric import score
from edgeqa.bench.squad import load_squad

T = "/work/shared/models/minilm-l6-h384-squad1"
DEV = "/work/shared/data/squad/dev-v1.1.json.gz"
models = {"fp32": load_qa_model(T, 2), "torch.ao": load_qa_model(T, 2, torch_int8=True)}
tao = load_qa_model(T, 2)
quantize_(tao.engine.model, Int8DynamicActivationInt8WeightConfig())
models["torchao"] = tao
ds = load_squad(DEV, 200)
preds = {}
for name, m in models.items():
    t = time.perf_counter()
    preds[name] = predict(m, ds.examples, batch_size=1 if name != "fp32" else 16, progress=False)
    s = score(ds, preds[name])
    same = sum(preds[name][q] == preds["fp32"][q] for q in preds["fp32"]) / len(preds["fp32"])
    print(
        f"{name}: EM {s['exact_match']:.2f} F1 {s['f1']:.2f} same-as-fp32 {100 * same:.1f}% ({time.perf_counter() - t:.0f}s)"
    )
same = sum(preds["torchao"][q] == preds["torch.ao"][q] for q in preds["fp32"]) / len(preds["fp32"])
print(f"torchao same-as-torch.ao {100 * same:.1f}%")
# batch dependence of torchao: one window alone vs with 3 others
rng = np.random.default_rng(0)
ids = rng.integers(1000, 20000, size=(4, 384), dtype=np.int64)
x = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
for name in ("torch.ao", "torchao"):
    e = models[name].engine
    d = np.abs(e({k: v[:1] for k, v in x.items()})[0][0] - e(x)[0][0]).max()
    print(f"{name}: |window alone - in batch of 4| max {d:.2e}")
# latency, batch 1 x 384, interleaved rounds
x1 = {k: v[:1] for k, v in x.items()}
for m in models.values():
    for _ in range(5):
        m.engine(x1)
rounds, per = int(sys.argv[1]) if len(sys.argv) > 1 else 20, 5
times = {n: [] for n in models}
for _ in range(rounds):
    for n, m in models.items():
        for _ in range(per):
            t = time.perf_counter()
            m.engine(x1)
            times[n].append(1000 * (time.perf_counter() - t))
base = statistics.median(times["fp32"])
for n, ts in times.items():
    q = statistics.quantiles(ts, n=10)
    print(
        f"{n}: p50 {statistics.median(ts):.1f} ms p90 {q[8]:.1f} mean {statistics.mean(ts):.1f} (x{statistics.median(ts) / base:.2f} of fp32, n={len(ts)})"
    )
print("torch", torch.__version__, "threads", torch.get_num_threads())
