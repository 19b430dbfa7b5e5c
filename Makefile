# Two commands on a fresh machine: `make demo` (the one command on MNIST with the CPU preset: the autoencoder,
# then the latent model, scored on eval_num_samples digits at the end) and `make test`.
# Both create .venv and install requirements.txt when needed, and nothing more when it is there.
# `make test-fast` is the inner loop: the suite without the tests marked slow (pytest.ini); `make test-benchmarks`
# runs the tests of the benchmark and study scripts, which make test leaves out.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := runs/demo

.PHONY: test test-fast test-benchmarks demo clean-demo

$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q -m "not benchmark" tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not benchmark" tests

test-benchmarks: $(STAMP)
	$(PY) -m pytest -q -m benchmark tests

demo: $(STAMP)
	$(PY) train_latent_ddpm.py --preset cpu --output_dir $(DEMO)

clean-demo:
	rm -rf $(DEMO)
