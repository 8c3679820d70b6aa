"""edgeqa's own interleaved benchmark (one subprocess per model per pass): batch 1 x 384, 2 threads."""

from edgeqa.bench.latency import LatencyConfig, benchmark_interleaved

T = "/work/shared/models/minilm-l6-h384-squad1"
models = {"torch fp32": (T, False), "torch.ao int8": (T, True)}
models.update({f"{k}/{v}": (f"/tmp/tao/{k}/{v}", False) for v in ("fused", "int8") for k in ("ts17", "dynamo18")})
cfg = LatencyConfig(batch_sizes=(1,), seq_lens=(384,), warmup=10, repeats=100, threads=2, rounds=5)
res = benchmark_interleaved(models, cfg)
for n, r in res.items():
    s = r["latency"][0]
    print(
        f"{n:16s} p50 {s['p50_ms']:6.1f} ms p90 {s['p90_ms']:6.1f} pass p50s {s['pass_p50_ms']} spread {s['pass_spread']}"
        f" MiB {r['file_bytes'] / 2**20:.1f}"
    )
print(res["torch fp32"]["machine"]["cpu"], res["torch fp32"]["versions"])
