# pgfailover: the two commands a user needs are `make demo` and `make test`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: test lint typecheck unit integration demo bench clean server-binaries

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# PostgreSQL server binaries (and other server tools the tests use); installs
# Debian's packages when run as root, else says what to install.
server-binaries:
	@bash scripts/ensure-server-binaries

lint: $(STAMP)
	$(BIN)/ruff check pgfailover tests benchmarks examples docker
	$(BIN)/ruff format --check pgfailover tests benchmarks examples docker

typecheck: $(STAMP)
	$(BIN)/mypy
	MYPYPATH=examples:examples/django_project $(BIN)/mypy --explicit-package-bases \
		examples/source.py examples/flask_app/app.py examples/django_project/settings.py \
		examples/django_project/manage.py examples/django_project/notes docker/demo_app.py

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) server-binaries
	$(BIN)/pytest tests/integration

# make installs the server tools, so tests that need them must find them
# (PGFAILOVER_REQUIRE_TOOLS); scripts/run-tests says why the unit tests run
# beside the benchmarks' tests.
test: $(STAMP) server-binaries lint typecheck
	PYTEST=$(BIN)/pytest bash scripts/run-tests

demo: $(STAMP) server-binaries
	$(BIN)/python -m pgfailover.demo

# Every benchmark, JSON lines into bench-results/ (a few minutes on the lab).
BENCH_OUT ?= bench-results
bench: $(STAMP) server-binaries
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python benchmarks/failover.py --runs 3 | tee $(BENCH_OUT)/failover.jsonl
	$(BIN)/python benchmarks/failover.py --runs 5 --variants kill --delays 0 \
		--contenders auto,async_auto,external,async_external,baseline,async_baseline \
		| tee $(BENCH_OUT)/async_failover.jsonl
	$(BIN)/python benchmarks/faults.py --runs 5 | tee $(BENCH_OUT)/faults.jsonl
	$(BIN)/python benchmarks/switchover.py --runs 5 | tee $(BENCH_OUT)/switchover.jsonl
	$(BIN)/python benchmarks/http_flood.py --pairs 5 | tee $(BENCH_OUT)/http_flood.jsonl
	$(BIN)/python benchmarks/overhead.py | tee $(BENCH_OUT)/overhead.jsonl
	$(BIN)/python benchmarks/async_overhead.py | tee $(BENCH_OUT)/async_overhead.jsonl
	$(BIN)/python benchmarks/reads.py | tee $(BENCH_OUT)/reads.jsonl
	$(BIN)/python benchmarks/probes.py | tee $(BENCH_OUT)/probes.jsonl
	$(BIN)/python benchmarks/scale.py | tee $(BENCH_OUT)/scale.jsonl
	$(BIN)/python benchmarks/scale.py --sizes 200 --runs 2 --pace 0.1 \
		| tee $(BENCH_OUT)/scale_saturated.jsonl
	$(BIN)/python benchmarks/scale.py --sizes 200 --contenders arbiter --fault hang \
		| tee $(BENCH_OUT)/scale_hang.jsonl
	$(BIN)/python benchmarks/scale_patroni.py | tee $(BENCH_OUT)/scale_patroni.jsonl
	$(BIN)/python benchmarks/arbiter_loss.py --sizes 50,200 --runs 2 \
		| tee $(BENCH_OUT)/arbiter_loss.jsonl
	$(BIN)/python benchmarks/warmup.py --connections 200 --runs 6 \
		| tee $(BENCH_OUT)/warmup.jsonl
	$(BIN)/python benchmarks/report.py $(BENCH_OUT)

clean:
	rm -rf $(VENV) bench-results .mypy_cache .ruff_cache .pytest_cache build *.egg-info
