"""Time one recovery/distillation step at each dropout setting, side by side, with the training loop's own step.

    python -m edgeqa.compress.step_time --model ../shared/models/minilm-l6-h384-squad1 \
        --data ../shared/data/squad/train-v1.1.rebuilt.json.gz --sparsity 0.8 --profile

Why: on CPUs, dropout is much of a training step. Attention dropout keeps scaled_dot_product_attention on its math
path, which draws a random mask over every head's scores, where without it the fused kernel runs. The settings
are timed in interleaved rounds on the same batches (these machines are shared and noisy), after a burn-in.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch

from edgeqa.bench.engines import load_tokenizer, load_torch_qa_model
from edgeqa.bench.qa import QAConfig
from edgeqa.compress.devices import precision_for
from edgeqa.compress.forward import Trainee, micro_step, set_dropout
from edgeqa.compress.losses import LossConfig
from edgeqa.compress.prune_magnitude import apply_magnitude_masks, prunable_linears
from edgeqa.compress.train_loop import make_optimizer
from edgeqa.compress.trainset import StepBatches, epoch_batches, load_trainset


def time_steps(
    model_dir: str,
    data: str,
    dropouts: list[float | None],
    sparsity: float = 0.0,
    batch_size: int = 16,
    steps: int = 10,
    rounds: int = 3,
    burn_in: int = 3,
    limit: int = 2000,
    profile: bool = False,
) -> dict[str, dict]:
    """Median seconds per optimiser step for each dropout (None: the model's own), on the same length-bucketed
    batches the loop trains on; `sparsity` > 0 adds global magnitude masks, as a recovery run has. With `profile`,
    also each setting's six costliest operators, as shares of its steps' CPU time (torch.profiler, one more round).
    Steps run in the precision `precision: auto` picks here, recorded with its reason."""
    tokenizer = load_tokenizer(model_dir)
    trainset = load_trainset(data, limit, tokenizer, QAConfig())
    batches = epoch_batches(trainset.lengths, batch_size, seed=0, stage=0, epoch=0)
    precision = precision_for("auto", "cpu")  # what a recipe's `precision: auto` trains in on this CPU
    bf16 = precision.bf16
    padded = StepBatches(trainset, pad_id=0)  # the loop's own micro-batches
    names = ["input_ids", "attention_mask", "token_type_ids"]
    loss = LossConfig(hard=1.0)  # the soft loss reads cached logits: the same student computation
    trainees = {}
    for p in dropouts:
        model = load_torch_qa_model(model_dir)
        if sparsity:
            apply_magnitude_masks(prunable_linears(model), sparsity, "global", None)
        if p is not None:
            set_dropout(model, p)
        model.get_input_embeddings().weight.requires_grad_(False)
        trainee = Trainee(model, None, []).train()
        trainees[p] = (trainee, make_optimizer(trainee, 1e-5, 0.01))

    def step(p: float | None, idx) -> None:
        trainee, optimizer = trainees[p]
        terms = micro_step(trainee, None, None, padded.micro_batch(idx), names, loss, {}, "cpu", bf16)
        (terms["loss"] / len(idx)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times: dict[float | None, list[float]] = {p: [] for p in dropouts}
    for p in dropouts:
        for i in range(burn_in):
            step(p, batches[i % len(batches)])
    for r in range(rounds):
        chosen = [batches[(burn_in + r * steps + k) % len(batches)] for k in range(steps)]  # small sets repeat
        for p in dropouts:
            t = time.perf_counter()
            for idx in chosen:
                step(p, idx)
            times[p].append((time.perf_counter() - t) / len(chosen))
    label = {p: "model's" if p is None else str(p) for p in dropouts}
    result: dict[str, dict] = {"seconds_per_step": {label[p]: round(statistics.median(v), 4) for p, v in times.items()}}
    result["precision"] = precision.to_dict()
    if profile:
        result["cpu_share"] = {label[p]: _top_operators(lambda p=p: [step(p, idx) for idx in chosen]) for p in dropouts}
    return result


def _top_operators(run, top: int = 6) -> dict[str, float]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return {e.key: round(e.self_cpu_time_total / total, 3) for e in ops[:top]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a QA model folder")
    ap.add_argument("--data", required=True, help="a SQuAD training file")
    ap.add_argument("--sparsity", type=float, default=0.0, help="global magnitude masks, as in recovery")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per setting per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also each setting's costliest operators")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    result = time_steps(
        args.model,
        args.data,
        [None, 0.0],
        args.sparsity,
        args.batch_size,
        args.steps,
        args.rounds,
        profile=args.profile,
    )
    print(json.dumps({**result, "batch_size": args.batch_size, "sparsity": args.sparsity}))


if __name__ == "__main__":
    main()
