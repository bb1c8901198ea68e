# llm-routing-worker: `make help` lists the targets. Every target sets itself up (venv, jars).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
KAFKA  := $(PYTHON) deploy/kafka/localkafka.py
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-unit lint typecheck bench kafka-jars kafka-tools otelcol kafka-up kafka-down kafka-cluster-up kafka-cluster-down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its dev extra

kafka-jars: ## resolve the Kafka broker jars from Maven Central into .kafka/jars (cached)
	$(KAFKA) jars

kafka-tools: ## resolve Kafka's command-line tools from Maven Central into .kafka/tools-jars (cached)
	$(KAFKA) tools-jars

otelcol: ## build the OpenTelemetry Collector with ocb from the Go module proxy into .otelcol (cached)
	$(PYTHON) deploy/otelcol/build.py

demo: install kafka-jars ## the main job: Kafka, simulator, two workers, a few thousand requests, a summary
	$(KAFKA) run --name demo -- $(PY) -m worker demo $(DEMO_ARGS)

test: install kafka-jars kafka-tools otelcol ## every test (unit, real broker, cluster, real tools); starts and stops Kafka
	$(KAFKA) run --name test -- $(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## only the tests that need no broker
	$(PY) -m pytest -m 'not kafka and not cluster' $(PYTEST_ARGS)

lint: install ## ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install ## mypy --strict
	$(PY) -m mypy

bench: install kafka-jars ## run every benchmark in bench/ (each prints one JSON object)
	@for b in bench/*_bench.py; do echo "== $$b"; $(PY) $$b || exit 1; done

kafka-up: kafka-jars ## start a single local broker on 127.0.0.1:19092 (`make kafka-down` stops it)
	$(KAFKA) up --name single

kafka-down: ## stop the broker `make kafka-up` started (other runs' brokers keep running)
	$(KAFKA) down --name single

kafka-cluster-up: kafka-jars ## start a three-node local cluster on 127.0.0.1:29092,29192,29292
	$(KAFKA) cluster-up

kafka-cluster-down: ## stop the three-node cluster
	$(KAFKA) down --name cluster

clean: ## stop the brokers make started here; remove the venv, and .kafka unless a broker still runs
	$(KAFKA) down --name single
	$(KAFKA) down --name cluster
	$(KAFKA) clean
	rm -rf $(VENV) .otelcol .mypy_cache .ruff_cache .pytest_cache
