# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages the test suite's real peers need (installed only when missing).
APT_PACKAGES ?= openssh-server snmpd snmp bsdutils redmine redmine-sqlite ruby-webrick chromium chromium-driver rsyslog prometheus rsyslog-openssl prometheus-blackbox-exporter systemd

.PHONY: demo test lint typecheck unit install test-deps clean bench bench-quick

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/hezo-agent demo

test-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing test peers:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint: install
	$(BIN)/ruff check agent collectors uploader config simulator tests bench

typecheck: install
	$(BIN)/mypy
	$(BIN)/mypy bench

unit: install test-deps
	$(BIN)/pytest -q

test: lint typecheck unit

# Benchmarks (bench/, results in docs/benchmarks.md). Full size takes about half an hour;
# quick runs the scale benchmark (3 minutes) alongside the six others, in under 5 minutes.
BENCH_OTHERS := detection false_alarms crash outage hostile logpull

bench: install test-deps
	@for s in scale $(BENCH_OTHERS); do $(BIN)/python bench/$$s.py --size full || exit 1; done

bench-quick: install test-deps
	@$(BIN)/python bench/scale.py --size quick & scale=$$!; \
	for s in $(BENCH_OTHERS); do $(BIN)/python bench/$$s.py --size quick || { kill $$scale; exit 1; }; done; \
	wait $$scale

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
