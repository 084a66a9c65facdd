# The two commands a new user needs: `make run` and `make test`. Both set up what they need.
SHELL := bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help venv run test bench manifests screenshots clean reset

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned requirements into $(VENV) ..."
	@# This machine's pip config names local indexes that may not exist; their warnings are noise.
	@$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@# The project itself, editable, for the `maas` command ($(BIN)/maas); its dependencies are the pins above.
	@$(BIN)/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@touch $@

venv: $(STAMP) ## Create the virtualenv from the pinned requirements

run: $(STAMP) ## Serve every function, the gateway and the model simulator on this machine
	@$(BIN)/python -m local serve

test: $(STAMP) ## Run the test suite (installs Debian's prometheus, redis-server, chromium, zsh and fish for the tests when missing)
	@bash tools/ensure_prometheus.sh
	@bash tools/ensure_redis.sh
	@bash tools/ensure_oidc_provider.sh
	@bash tools/ensure_chromium.sh
	@bash tools/ensure_shells.sh
	@command -v jq >/dev/null && command -v curl >/dev/null || \
		(echo "installing curl and jq (the quickstart test pastes curl | jq) ..." && \
		 apt-get update -qq && apt-get install -y -qq --no-install-recommends curl jq >/dev/null)
	@# Every core (each file in one worker); the fuzzing file alone after, in one process: its
	@# items (one per API operation) share one node id, which xdist would run once, not 30 times.
	@$(BIN)/python -m pytest -n auto --dist loadfile --ignore=tests/test_fuzz_admin.py
	@$(BIN)/python -m pytest tests/test_fuzz_admin.py

bench: $(STAMP) ## Benchmark the gateway against a direct backend, then the admin side at 100k keys (ARGS="--only admin --quick")
	@$(BIN)/python -m bench $(ARGS)

screenshots: $(STAMP) ## Photograph the console's main pages into docs/screenshots/ (with Debian's chromium)
	@bash tools/ensure_oidc_provider.sh
	@bash tools/ensure_chromium.sh
	@$(BIN)/python -m tools.screenshots

manifests: $(STAMP) ## Render the cluster deployment to dist/manifests.yaml, its starting policies to dist/policies.yaml
	@$(BIN)/python -m tools.manifests --out dist/manifests.yaml --policies-out dist/policies.yaml

cluster-check: $(STAMP) ## Check a live cluster's prerequisites, then run the quickstart through its gateway (ARGS="--help")
	@$(BIN)/python -m tools.cluster_check $(ARGS)

clean: ## Remove what can be rebuilt (the virtualenv, dist/, caches); keeps your data in .maas/
	rm -rf $(VENV) dist .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +

DATA_DIR := $(or $(MAAS_DATA_DIR),.maas)
reset: ## Delete the local data: teams, keys, usage, the admin key and certificate (asks; YES=1 skips)
	@test -e "$(DATA_DIR)" || { echo "nothing to delete: $(DATA_DIR) does not exist"; exit 0; }; \
	if [ "$(YES)" != 1 ]; then \
		echo "This deletes $(DATA_DIR)/: every team, key and usage record, and the admin key."; \
		echo "Stop \`make run\` first. Type YES to delete (or run make reset YES=1):"; \
		read -r answer || answer=; \
		[ "$$answer" = YES ] || { echo "not deleted"; exit 1; }; \
	fi; \
	rm -rf "$(DATA_DIR)" && echo "deleted $(DATA_DIR)/"
