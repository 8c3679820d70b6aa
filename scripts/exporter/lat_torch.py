"""fp32 / torch.ao int8 / torchao int8 in one process, batch 1 x 384, 2 threads: rounds of 5 calls each, A B C A B C ..."""

import statistics
import sys
import time

import numpy as np
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

from edgeqa.bench.engines import load_qa_model

T = "/work/shared/models/minilm-l6-h384-squad1"
models = {"fp32": load_qa_model(T, 2), "torch.ao": load_qa_model(T, 2, torch_int8=True), "torchao": load_qa_model(T, 2)}
quantize_(models["torchao"].engine.model, Int8DynamicActivationInt8WeightConfig())
ids = np.random.default_rng(0).integers(1000, 20000, size=(1, 384), dtype=np.int64)
x = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
for m in models.values():
    for _ in range(5):
        m.engine(x)
rounds = int(sys.argv[1])
times = {n: [] for n in models}
rmed = {n: [] for n in models}
for _ in range(rounds):
    for n, m in models.items():
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            m.engine(x)
            ts.append(1000 * (time.perf_counter() - t))
        times[n] += ts
        rmed[n].append(statistics.median(ts))
# rounds where fp32's median is within 20% of its best round: the machine was quiet for that round
best = min(rmed["fp32"])
quiet = [i for i, v in enumerate(rmed["fp32"]) if v < 1.2 * best]
for n, ts in times.items():
    q = statistics.median([rmed[n][i] for i in quiet])
    print(
        f"{n:9s} p50 {statistics.median(ts):6.1f} ms min {min(ts):5.1f} quiet-round p50 {q:5.1f} (n={len(ts)}, quiet rounds {len(quiet)}/{rounds})"
    )
