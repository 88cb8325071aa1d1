PYTHON ?= python3
PIP    ?= $(PYTHON) -m pip

.PHONY: install image test bench bench-read clean

install:
	$(PIP) install -e '.[test]'

image: install
	$(MAKE) -C examples image MKEROFS="$(PYTHON) -m mkerofs" IMAGE=../build/example.erofs

test:
	$(PYTHON) -m pytest -q tests

bench:
	$(PYTHON) bench/bench.py

bench-read:
	$(PYTHON) bench/bench_read.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
