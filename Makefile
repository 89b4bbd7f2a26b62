# Each target creates/updates .venv first (one pip call; torch pair pinned in constraints.txt).
VENV ?= .venv
PY := $(VENV)/bin/python
DERMBENCH := $(VENV)/bin/dermbench
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test bench leaderboard clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[all,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m dermbench demo

test: install
	$(PY) -m pytest -n 2 -q

bench: install
	for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

leaderboard: install
	$(PY) -m dermbench demo --out leaderboards/results --publish leaderboards --n-boot 10000

clean:
	rm -rf demo-out .pytest_cache
