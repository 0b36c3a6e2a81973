# One interface for people and CI. `make run` starts the service locally; `make test` runs every check.
# Both bootstrap what they need on a fresh machine: uv (pinned, in .tools/), a Python 3.12 virtual
# environment with the locked dependencies (uv.lock), and the isolated template tools (SAM CLI, cfn-lint, checkov).

SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION      := 0.13.9
TOOLS           := .tools
UV              := $(TOOLS)/bootstrap/bin/uv
VENV            := .venv
PY              := $(VENV)/bin/python
PYTHON312        = $(shell scripts/find-python.sh)
PYTHONPATH_DEV  := layers/shared:functions/api:functions/worker:local
# pytest-xdist workers: most of the suite waits on servers and queues, so more workers than cores still pays
# (make test: 6 against 4 and 8, measured back to back in docs/testing.md)
UNIT_WORKERS    ?= 4
TEST_WORKERS    ?= 6
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_COMPILE_BYTECODE := 1
# The test targets cache bytecode (__pycache__/, ignored by git) even when PYTHONDONTWRITEBYTECODE is set: every
# xdist worker and every local-stack process would otherwise compile the project and rewrite the tests' asserts
# again, about 15 s of CPU per `make unit` (docs/testing.md).
TEST_ENV        := PYTHONPATH= PYTHONDONTWRITEBYTECODE=
# schemathesis' and anyio's pytest plugins: the suite uses neither (the fuzzing calls schemathesis' library), and
# loading them costs each pytest process about half a second of CPU.
UNUSED_PLUGINS  := -p no:schemathesis -p no:anyio

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
		'{ name[NR] = $$1; text[NR] = $$2; if (length($$1) > width) width = length($$1) } \
		 END { for (i = 1; i <= NR; i++) printf "  make %-" width "s  %s\n", name[i], text[i] }'

# Each bootstrap step says what it does and roughly how long it takes: the first run is silent for a minute otherwise.
$(UV):
	@echo "bootstrap: uv $(UV_VERSION) into $(TOOLS)/bootstrap/ (first run only, about 10 s)"
	@python3 -m venv $(TOOLS)/bootstrap
	@$(TOOLS)/bootstrap/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) uv.lock pyproject.toml $(wildcard cli/flux_images_cli/*.py cli/flux_images/*.py)
	@echo "bootstrap: the locked dependencies (uv.lock) into $(VENV)/ (first run: about a minute and ~450 MB;" \
		"after a change to uv.lock: seconds)"
	@$(UV) sync --frozen --all-extras --python "$(PYTHON312)" --quiet
	@touch $@

.PHONY: venv
venv: $(VENV)/.synced ## Create/update the virtual environment from uv.lock

.PHONY: tools
tools: $(UV) ## Install the isolated template tools (SAM CLI, cfn-lint, checkov) into .tools/
	@UV="$(UV)" bash scripts/tools.sh

.PHONY: run
run: venv ## Run the service locally (moto, Flux emulator, local API Gateway, worker) on http://127.0.0.1:3000 (PORT), the console on PORT+3
	@PYTHONPATH=$(PYTHONPATH_DEV) $(PY) -m devstack

.PHONY: run-built
run-built: venv ## make run, with the functions run from the sam build artefact (rebuilt when stale) in child processes
	@PYTHONPATH=local $(PY) -m devstack --built

.PHONY: chromium
chromium: ## Install Debian's chromium for the browser tests when it is missing (as root, like CI)
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

.PHONY: events
events: venv ## The events the local stack's bus copied to its SQS queue, taken off it (ARGS=--keep leaves them)
	@PYTHONPATH=local $(PY) -m devstack.events $(ARGS)

.PHONY: unit
unit: venv ## The fast loop: the tests that need no stack (tests/unit without the "stack" marker), on 4 xdist workers
	@$(TEST_ENV) $(PY) -m pytest tests/unit -m "not stack" -q -n $(UNIT_WORKERS) --dist worksteal $(UNUSED_PLUGINS)

.PHONY: test
test: venv tools chromium lint requirements-check ## Every check CI runs: lint, unit, integration, template, local-stack, browser tests
	@$(TEST_ENV) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(UNUSED_PLUGINS)

.PHONY: demo
demo: venv ## The local stack + a 12-prompt bulk job through the flux-images CLI; images land in ./demo-images
	@bash scripts/demo.sh

.PHONY: lint
lint: venv ## ruff (lint + format check) and mypy (with the pydantic plugin) over functions, layers, cli and local
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@PYTHONPATH= $(VENV)/bin/mypy functions layers/shared cli local

.PHONY: format
format: venv ## Format the code
	@$(VENV)/bin/ruff check --fix .
	@$(VENV)/bin/ruff format .

.PHONY: requirements
requirements: $(UV) ## Re-export the layer's pinned requirements from uv.lock
	@$(UV) export --frozen --format requirements-txt --no-dev --no-emit-project --no-hashes --quiet \
		-o layers/dependencies/requirements.txt

.PHONY: requirements-check
requirements-check: $(UV) ## Fail if layers/dependencies/requirements.txt is out of date with uv.lock
	@$(UV) export --frozen --format requirements-txt --no-dev --no-emit-project --no-hashes --quiet \
		-o $(TOOLS)/requirements.check.txt
	@diff -u <(grep -v '^#' layers/dependencies/requirements.txt) <(grep -v '^#' $(TOOLS)/requirements.check.txt) \
		|| { echo "layers/dependencies/requirements.txt is stale: run 'make requirements'"; exit 1; }

.PHONY: build
build: tools ## sam build (no container; uses the local Python 3.12)
	@PATH="$$(dirname "$(PYTHON312)"):$$PATH" $(TOOLS)/bin/sam build

.PHONY: validate
validate: tools ## sam validate --lint, cfn-lint and checkov on template.yaml
	@$(TOOLS)/bin/sam validate --lint
	@$(TOOLS)/bin/cfn-lint template.yaml
	@$(TOOLS)/bin/checkov -f template.yaml --framework cloudformation --quiet --compact

.PHONY: deploy
deploy: build ## sam deploy --guided (needs AWS credentials)
	@$(TOOLS)/bin/sam deploy --guided

.PHONY: docs
docs: venv ## Regenerate docs/job-message.schema.json, docs/image-requested.schema.json and docs/openapi.json from the code
	@PYTHONPATH=$(PYTHONPATH_DEV) $(PY) scripts/export_schemas.py

.PHONY: bench
bench: venv ## Run the benchmarks (cold start, mirror memory, local-stack overhead, bulk, loopback load)
	@PYTHONPATH=$(PYTHONPATH_DEV) $(PY) benchmarks/run_all.py

.PHONY: reliability-report
reliability-report: ## After make test: the reliability table (README) and every case (docs/reliability.md) from the suite's report
	@$(PY) scripts/reliability_table.py
	@{ echo "# Reliability and security: every case"; echo; \
	   echo "Generated by \`make reliability-report\` from the report \`make test\` writes (build/reliability-report.json)."; \
	   echo; $(PY) scripts/reliability_table.py --cases; } > docs/reliability.md

.PHONY: clean
clean: ## Remove build output and caches (keeps .venv and .tools)
	rm -rf .aws-sam .pytest_cache .ruff_cache .mypy_cache
