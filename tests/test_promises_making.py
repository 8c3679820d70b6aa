"""Behaviours README.md and docs/ promise about making models: the teacher-logit cache, structured pruning's
choice, recipe chains, static int8's exclusions, the int8 presets and `--only`, each pinned by a test that fails when
the behaviour is broken (scoring and runs: test_promises_scoring.py).

Each test names the promise it pins and where it is made. Expected values are worked out by hand (or planted in a
hand-set model), never computed by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TOY_QAS, make_tiny_qa_model, write_recipe, write_squad
from edgeqa.bench.qa import QAConfig

# --- the teacher-logit cache (README: "reads one cache of teacher logits"; compress/trainset.py: the cache is "keyed
# by the teacher's weights, the data and the tokenisation settings"; docs/cli.md: teacher logits in `runs/cache/`) --


def _distill_recipe(path: Path, teacher: Path, train: Path, dev: Path, name: str) -> Path:
    steps = f"""\
    - distill:
        name: student
        student: {{layers: [0]}}
        train: {{data: {train}, batch_size: 4, precision: fp32, eval_limit: 3, checkpoint_every: 50}}
        stages:
          - {{loss: {{soft: 1.0}}, max_steps: 1}}
    """
    return write_recipe(path, teacher, dev, steps, name=name)


FP16_ATOL = 5e-4  # the cache keeps float16: logits of tiny random models (|x| < 0.5) round by at most 2**-12


def _window_logits(model_dir: Path, trainset) -> np.ndarray:
    """(windows, 2, width) start and end logits of a model on the training windows, by plain transformers."""
    from transformers import AutoModelForQuestionAnswering

    from edgeqa.bench.qa import pad

    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    arrays = pad(trainset, list(range(len(trainset))), 0)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in arrays.items()})
    logits = torch.stack([out.start_logits, out.end_logits], 1).numpy()
    assert np.abs(logits).max() < 0.5  # FP16_ATOL holds
    return logits


def test_another_teacher_of_the_same_shape_never_reuses_a_cache(tmp_path, toy_squad):
    """Two recipes under one runs folder share `runs/cache`; their teachers differ only in their weights (seed), so
    the second must compute its own logits, not read the first's."""
    from edgeqa.bench.engines import load_tokenizer
    from edgeqa.compress.trainset import load_trainset
    from edgeqa.pipeline.run import run_recipe

    train = write_squad(tmp_path / "train.json", TOY_QAS * 4)
    teachers = {name: make_tiny_qa_model(tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 1))}
    for name, teacher in teachers.items():
        run_recipe(_distill_recipe(tmp_path / f"{name}.yaml", teacher, train, toy_squad, name), tmp_path / "runs")
    caches = sorted((tmp_path / "runs" / "cache").iterdir())
    assert len(caches) == 2
    by_teacher = {json.loads((c / "meta.json").read_text())["teacher"]: c for c in caches}
    assert set(by_teacher) == {str(t) for t in teachers.values()}
    trainset = load_trainset(str(train), None, load_tokenizer(teachers["a"]), QAConfig())
    for name, teacher in teachers.items():
        cached = np.load(by_teacher[str(teacher)] / "logits.npy").astype(np.float32)
        for other, expected in ((name, True), ({"a": "b", "b": "a"}[name], False)):
            own = _window_logits(teachers[other], trainset)
            width = own.shape[2]
            close = np.allclose(cached[:, :, :width], own, rtol=0, atol=FP16_ATOL) and (cached[:, :, width:] == 0).all()
            assert close == expected, (name, other)


# --- structured pruning's choice (docs/results/pruning.md via README: "a third of the heads, half the FFN neurons";
# compress/prune_structured.py: heads ranked globally by the L2 norm of their weights, the lowest removed; neurons
# ranked by the norm of their input row and output column, the lowest removed from every layer) -------------------


def test_structured_pruning_keeps_the_heads_and_neurons_of_largest_weights(tmp_path):
    """Importance planted by hand: the weights of 4 of the 8 heads (3 in layer 0, 1 in layer 1: the ranking is
    global) and of 32 of each layer's 128 FFN neurons are multiplied by 10. Removing half the heads and three
    quarters of the neurons must remove exactly the others, and the kept weights must be the planted ones."""
    from transformers import AutoModelForQuestionAnswering

    from edgeqa.compress.prune import StructuredConfig, prune_now

    model = AutoModelForQuestionAnswering.from_pretrained(make_tiny_qa_model(tmp_path / "m", hidden=32, heads=4))
    kept_heads = {0: [0, 1, 3], 1: [2]}
    rng = np.random.default_rng(0)
    kept_neurons = {i: np.sort(rng.choice(128, size=32, replace=False)) for i in range(2)}
    with torch.no_grad():
        for i, layer in enumerate(model.bert.encoder.layer):
            for h in kept_heads[i]:
                rows = slice(8 * h, 8 * h + 8)
                for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                    lin.weight[rows] *= 10
                layer.attention.output.dense.weight[:, rows] *= 10
            n = torch.from_numpy(kept_neurons[i])
            layer.intermediate.dense.weight[n] *= 10
            layer.output.dense.weight[:, n] *= 10
    before = {k: v.clone() for k, v in model.state_dict().items()}

    prune_now(model, StructuredConfig(heads=0.5, ffn=0.75))

    assert {int(k): sorted(v) for k, v in model.config.pruned_heads.items()} == {0: [2], 1: [0, 1, 3]}
    assert model.config.intermediate_size == 32
    for i, layer in enumerate(model.bert.encoder.layer):
        p = f"bert.encoder.layer.{i}."
        rows = torch.cat([torch.arange(8 * h, 8 * h + 8) for h in kept_heads[i]])
        for name in ("query", "key", "value"):
            lin = getattr(layer.attention.self, name)
            assert torch.equal(lin.weight, before[f"{p}attention.self.{name}.weight"][rows])
            assert torch.equal(lin.bias, before[f"{p}attention.self.{name}.bias"][rows])
        assert torch.equal(layer.attention.output.dense.weight, before[f"{p}attention.output.dense.weight"][:, rows])
        n = torch.from_numpy(kept_neurons[i])
        assert torch.equal(layer.intermediate.dense.weight, before[f"{p}intermediate.dense.weight"][n])
        assert torch.equal(layer.intermediate.dense.bias, before[f"{p}intermediate.dense.bias"][n])
        assert torch.equal(layer.output.dense.weight, before[f"{p}output.dense.weight"][:, n])


# --- recipe chains (docs/recipes.md: model-making steps take `name` and `from`; docs/cli.md `--only`: "the variants
# it is made from (sources, a pruning step's teacher)"; steps/prune_step.py: recovery from `teacher`) --


def test_a_pruning_recovery_learns_from_the_teacher_the_recipe_names(tmp_path, toy_squad):
    """`p2` prunes the recipe's model and recovers from `teacher: p1`, a pruned copy with other logits: the
    training record, the logit cache and the cached logits themselves must all be p1's, neither the model being
    pruned nor the recipe's model (the default teacher, here the same model)."""
    from edgeqa.bench.engines import load_tokenizer
    from edgeqa.compress.trainset import load_trainset
    from edgeqa.pipeline.run import run_recipe

    model = make_tiny_qa_model(tmp_path / "m")
    train = write_squad(tmp_path / "train.json", TOY_QAS * 4)
    steps = f"""\
    - prune: {{name: p1, sparsity: 0.9}}
    - prune:
        name: p2
        teacher: p1
        sparsity: 0.2
        train: {{data: {train}, batch_size: 4, precision: fp32, eval_limit: 3, checkpoint_every: 50}}
        stages:
          - {{loss: {{soft: 1.0}}, max_steps: 1}}
    """
    root = run_recipe(write_recipe(tmp_path / "chain.yaml", model, toy_squad, steps, name="c"), tmp_path / "runs")
    p1 = root / "models" / "p1"
    assert json.loads((root / "models" / "p2" / "training.json").read_text())["teacher"] == str(p1)
    assert json.loads((root / "models" / "p2" / "prune.json").read_text())["recovery"]["teacher"] == str(p1)
    (cache,) = (tmp_path / "runs" / "cache").iterdir()
    assert json.loads((cache / "meta.json").read_text())["teacher"] == str(p1)
    trainset = load_trainset(str(train), None, load_tokenizer(model), QAConfig())
    cached = np.load(cache / "logits.npy").astype(np.float32)
    for teacher, expected in ((p1, True), (model, False)):
        logits = _window_logits(teacher, trainset)
        assert np.allclose(cached[:, :, : logits.shape[2]], logits, rtol=0, atol=FP16_ATOL) == expected, teacher


# --- static int8's exclusions (docs/recipes.md `quantize`: "`exclude` globs kept in float"; export/quantize.py) ----


def test_a_node_excluded_from_static_int8_stays_float_in_the_qdq_graph(tiny_onnx_model, toy_squad, tmp_path):
    """Static (QDQ) int8 calibrated on SQuAD windows with `exclude: ["*qa_outputs*"]`: the QA head's MatMul still
    multiplies by its float weight, while an encoder MatMul's weight comes through a DequantizeLinear of int8."""
    import onnx

    from edgeqa.export.quantize import QuantizeConfig, quantize

    _, onnx_dir = tiny_onnx_model
    cfg = QuantizeConfig(mode="static", exclude=("*qa_outputs*",), calibration_samples=8)
    out = quantize(onnx_dir, tmp_path / "int8", cfg, calibration_data=toy_squad)
    graph = onnx.load(str(out / "model.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    nodes = {n.name: n for n in graph.node}

    def weight_of(name: str):
        """The initializer a MatMul multiplies by, through a DequantizeLinear if there is one."""
        weight = nodes[name].input[1]
        dq = producer.get(weight)
        if dq is None:
            return inits[weight], False
        assert dq.op_type == "DequantizeLinear"
        return inits[dq.input[0]], True

    head, head_dequantized = weight_of("/qa_outputs/MatMul")
    assert not head_dequantized and head.data_type == onnx.TensorProto.FLOAT
    for name in ("/bert/encoder/layer.1/output/dense/MatMul", "/bert/encoder/layer.0/attention/self/query/MatMul"):
        weight, dequantized = weight_of(name)
        assert dequantized and weight.data_type == onnx.TensorProto.INT8, name
    excluded = json.loads((out / "quantization.json").read_text())["excluded_nodes"]
    assert sorted(excluded) == ["/qa_outputs/Add", "/qa_outputs/MatMul"]


# --- int8 presets (docs/machines.md, "Int8 presets": `amx` and the VNNI presets keep 8-bit weights, `avx2` and
# `avx512` 7-bit ones, every preset per channel; "Per-tensor scales are what costs") -------------------------------


@pytest.mark.parametrize("name, top", [("amx", 127), ("avx2", 64)])
def test_int8_presets_quantize_each_weight_column_on_its_own_scale_and_width(tiny_onnx_model, tmp_path, name, top):
    """Symmetric int8 maps each output column's largest |weight| to the top of the range: 127 with 8-bit weights,
    64 with reduce_range's 7 bits ([-64, 64]); per channel, every column reaches it (per tensor, only the column
    holding the matrix's largest weight would), and each weight dequantizes to within half its column's step."""
    import onnx
    from onnx import numpy_helper

    from edgeqa.export.quantize import preset, quantize

    _, onnx_dir = tiny_onnx_model
    out = quantize(onnx_dir, tmp_path / name, preset(name))
    source = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_dir / "model.onnx")).graph.initializer}
    graph = onnx.load(str(out / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = [n.input[1] for n in graph.node if n.op_type == "MatMulInteger" and n.input[1] in inits]
    assert len(weights) == 2 * 6 + 1  # q, k, v, attention output, FFN in and out per layer, and the QA head
    for w in weights:
        q = inits[w].astype(np.int64)
        assert inits[w].dtype == np.int8
        assert (np.abs(q).max(axis=0) == top).all(), w
        scale = inits[w.removesuffix("_quantized") + "_scale"]
        assert scale.shape == (q.shape[1],)
        original = source[w.removesuffix("_quantized")]
        assert np.allclose(scale, np.abs(original).max(axis=0) / top, rtol=1e-6)
        assert (np.abs(q * scale - original) <= scale / 2 * (1 + 1e-5)).all()


# --- a part of a recipe (docs/cli.md: `edgeqa run RECIPE --only NAME` "makes one variant and the variants it is
# made from (sources, a pruning step's teacher)") -------------------------------------------------------------------


def test_only_makes_a_pruning_steps_teacher_and_sources_but_nothing_else(tmp_path, toy_squad):
    from edgeqa.pipeline.recipe import load_recipe
    from edgeqa.pipeline.run import steps_making

    steps = f"""\
    - export: {{name: onnx}}
    - distill: {{name: small, student: {{layers: [0]}}, train: {{data: {toy_squad}}}}}
    - prune: {{name: half, sparsity: 0.5}}
    - prune: {{name: slim, from: half, sparsity: 0.6}}
    - prune:
        name: recovered
        from: slim
        teacher: small
        sparsity: 0.7
        train: {{data: {toy_squad}}}
        stages: [{{loss: {{soft: 1.0}}}}]
    - quantize: {{name: int8, from: onnx}}
    """
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tmp_path / "m", toy_squad, steps))
    # recovered <- slim <- half (its sources) and small (its teacher), in recipe order; not onnx, not int8.
    assert [s.name for s in steps_making(recipe, ("recovered",))] == ["small", "half", "slim", "recovered"]
    assert [s.name for s in steps_making(recipe, ("int8",))] == ["onnx", "int8"]
