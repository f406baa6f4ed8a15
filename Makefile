# fedbt-bench: `make reproduce` runs the default study, `make test` runs the test suite.
# Both create .venv and install the project first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FLOWER_STAMP := $(VENV)/.installed-flower
# The oldest flwr the extra allows (pyproject.toml: flwr[simulation]>=1.40,<1.43); make test runs the newest.
FLOWER_OLDEST := 1.40.0
OLDEST_VENV := .venv-flwr-$(FLOWER_OLDEST)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-flower test test-fast test-flower lint format smoke minilm reproduce ablation vision hetero budget budget-rounds privacy bench clean
.PHONY: config-docs check-ui test-slurm test-flower-oldest test-heavy

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The optional Flower runtime (flwr[simulation], i.e. with Ray): about 20 s on top of the core install.
$(FLOWER_STAMP): $(STAMP)
	$(BIN)/pip install -e '.[dev,flower]'
	touch $(FLOWER_STAMP)

install-flower: $(FLOWER_STAMP)

# loadgroup keeps the Flower tests (one SuperLink per module) on one worker. The tests include `snakemake --lint`
# (tests/test_pipeline.py) and the check that config/README.md matches the schema.
test: $(FLOWER_STAMP)
	$(BIN)/ruff check fedbt baselines tests benchmarks
	$(BIN)/pytest -n 2 --dist loadgroup -m "not heavy" --durations=10

# The slowest integration checks, kept out of make test's time (.ci/run runs them after it): the paper study's
# 1,835-job plan (snakemake --dry-run, and its shared jobs), a Flower deployment of a SuperLink and two SuperNodes.
test-heavy: $(FLOWER_STAMP)
	$(BIN)/pytest -n 2 --dist loadgroup -m heavy --durations=5

test-fast: $(STAMP)
	$(BIN)/pytest -n 2 -m "not e2e and not flower and not heavy"

test-flower: $(FLOWER_STAMP)
	$(BIN)/pytest -n 2 --dist loadgroup -m flower

# The Flower tests against the oldest flwr of the extra's range, in a venv of their own (.ci/run runs this).
test-flower-oldest:
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/pip install -q -e '.[dev]' 'flwr[simulation]==$(FLOWER_OLDEST)' 'psutil>=5.9'
	$(OLDEST_VENV)/bin/python -c "import flwr; assert flwr.__version__ == '$(FLOWER_OLDEST)', flwr.__version__"
	$(OLDEST_VENV)/bin/pytest -m flower -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check fedbt baselines tests benchmarks
	$(BIN)/ruff format --check fedbt baselines tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format fedbt baselines tests benchmarks
	$(BIN)/ruff check --fix fedbt baselines tests benchmarks

smoke: $(STAMP)
	$(BIN)/fedbt run config/runs/smoke.yaml

minilm: $(STAMP)
	$(BIN)/fedbt run config/runs/fedavg-minilm.yaml

# --forcerun report: the committed tables are the report's outputs, so force it; Snakemake then runs every job
# whose metrics.json is missing (all of them in a fresh clone, none on a second call).
reproduce: $(STAMP)
	$(BIN)/snakemake --forcerun report
	$(BIN)/snakemake --report results/report.html

# The ablation and depth study (Tables 4 and 7, client depth, the baselines the default tables leave out): results/ablation/.
ablation: $(STAMP)
	$(BIN)/snakemake --configfile config/ablation.yaml --forcerun report
	$(BIN)/snakemake --configfile config/ablation.yaml --report results/ablation/report.html

# The vision study (small ViT on CIFAR-10, its starting model pre-trained by the pipeline): results/vision/.
vision: $(STAMP)
	$(BIN)/snakemake --configfile config/vision.yaml --forcerun report
	$(BIN)/snakemake --configfile config/vision.yaml --report results/vision/report.html

# The heterogeneous-clients study (three resource tiers, MiniLM): results/hetero/.
hetero: $(STAMP)
	$(BIN)/snakemake --configfile config/hetero.yaml --forcerun report
	$(BIN)/snakemake --configfile config/hetero.yaml --report results/hetero/report.html

# The budget study (FedBT against FedAvg and FedAvg at FedBT's FLOPs at 2, 8 and 32 local steps per round):
# results/budget/.
budget: $(STAMP)
	$(BIN)/snakemake --configfile config/budget.yaml --forcerun report
	$(BIN)/snakemake --configfile config/budget.yaml --report results/budget/report.html

# The budget study's largest point for 10 rounds (how near FedAvg is to convergence after 5): results/budget-rounds/.
budget-rounds: $(STAMP)
	$(BIN)/snakemake --configfile config/budget-rounds.yaml --forcerun report
	$(BIN)/snakemake --configfile config/budget-rounds.yaml --report results/budget-rounds/report.html

# The privacy study (client-level DP on fedavg, fedbt, freeze-bottom, lora; epsilon in the tables): results/privacy/.
privacy: $(STAMP)
	$(BIN)/snakemake --configfile config/privacy.yaml --forcerun report
	$(BIN)/snakemake --configfile config/privacy.yaml --report results/privacy/report.html

bench: $(FLOWER_STAMP)
	$(BIN)/python benchmarks/simulator_overhead.py
	$(BIN)/python benchmarks/mlm_decoder.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/flower_runtime.py
	$(BIN)/python benchmarks/malloc_tunables.py
	$(BIN)/python benchmarks/optimizer_kernel.py

# config/README.md's key table, regenerated from workflow/schemas/config.schema.yaml (a test checks it is current).
config-docs: $(STAMP)
	$(BIN)/python -m fedbt.config_docs config/README.md

# Heavy checks with Debian packages CI lacks (installed here as root); both run the tiny test study in /tmp.
# check-ui: MLflow's UI and the report in headless Chromium; screenshots in $(CHECK_UI_OUT).
CHECK_UI_OUT ?= /tmp/fedbt-check-ui
check-ui: $(STAMP)
	command -v chromium > /dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(BIN)/python -u tests/integration/check_ui.py --out $(CHECK_UI_OUT)

# test-slurm: a single-node Slurm (slurm-wlm + munge) started here, the test study through profiles/slurm.
test-slurm: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,slurm]'
	$(BIN)/python -u tests/integration/check_slurm.py

clean:
	rm -rf results/runs results/partitions results/mlflow.db results/mlartifacts results/vision/runs results/hetero/runs \
		results/ablation/runs results/budget/runs results/budget-rounds/runs results/privacy/runs
