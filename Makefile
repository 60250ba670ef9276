# Every target creates .venv when it is missing. Python 3.11+ is the only prerequisite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test pytest lint typecheck openapi openapi-check bench chaos fuzz format clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("mailsvc needs Python 3.11 or newer" if sys.version_info < (3, 11) else 0)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

## run: the whole service on the embedded PostgreSQL, Redis and capture SMTP server
##      (make run ARGS=--fake-providers: through fake SendGrid/Mailgun/SES/SMTP instead)
run: $(STAMP)
	$(BIN)/mailsvc dev $(ARGS)

## test: lint, type-check, check openapi.yaml, then the full test suite against real servers
test: $(STAMP) lint typecheck openapi-check pytest

pytest: $(STAMP)
	$(BIN)/pytest --durations=15

lint: $(STAMP)
	$(BIN)/ruff check src tests bench alembic
	$(BIN)/ruff format --check src tests bench alembic

format: $(STAMP)
	$(BIN)/ruff format src tests bench alembic
	$(BIN)/ruff check --fix src tests bench alembic

typecheck: $(STAMP)
	$(BIN)/mypy

openapi: $(STAMP)
	$(BIN)/mailsvc openapi --output openapi.yaml

openapi-check: $(STAMP)
	$(BIN)/mailsvc openapi --output openapi.yaml --check

## bench: measure against the real stack, print the table (see README)
bench: $(STAMP)
	$(BIN)/python -m bench

## fuzz: schemathesis against a real API: its coverage phase and 60 generated requests an
##       operation, over 1,000 in all (make test runs a short pass of the same test, about 200)
FUZZ_EXAMPLES ?= 60
fuzz: $(STAMP)
	MAILSVC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) MAILSVC_FUZZ_PHASES=examples,coverage,fuzzing \
		$(BIN)/pytest tests/test_fuzz.py -s -p no:cacheprovider

## chaos: 20,000 messages through worker kills, Redis restarts and a provider outage
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
