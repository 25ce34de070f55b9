# Two entry points, each self-contained on a fresh clone, each with its own environment:
#   make run    .venv       the package and what training needs, nothing else
#   make test   .venv-test  also the [test] extra and the [tpu] extra (libtpu), which the
#                           ahead-of-time TPU compile tests need to compile for a TPU on this CPU.
# libtpu stays out of .venv: where it is installed, the first `jax.devices()` on a machine
# without a TPU probes for one and logs errors; on a TPU or GPU machine jax picks the device either way.
PYTHON ?= python3
VENV ?= .venv
TEST_VENV ?= .venv-test
WORKDIR ?= workdir/llama2_tiny

$(VENV)/.installed: EXTRAS :=
$(TEST_VENV)/.installed: EXTRAS := [test,tpu]

# A fresh environment (--clear drops whatever an older recipe installed) holding the package with EXTRAS.
$(VENV)/.installed $(TEST_VENV)/.installed: setup.py Makefile
	$(PYTHON) -m venv --clear $(@D)
	$(@D)/bin/python -m pip install --quiet --upgrade pip
	$(@D)/bin/python -m pip install --quiet -e ".$(EXTRAS)"
	touch $@

.PHONY: run test
run: $(VENV)/.installed
	$(VENV)/bin/python -m research.run --config configs/llama2.py:tiny --workdir $(WORKDIR)

test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python -m pytest -q -n 2 --durations=25
