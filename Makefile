# `make demo` and `make test` work on a fresh clone: each creates .venv and installs the project
# (with the optional tracking extras, so their tests run rather than skip).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.clotclf-installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,mlflow,tensorboard,transformers,ssl]" >$(VENV)/pip.log 2>&1 || { tail -30 $(VENV)/pip.log; exit 1; }
	$(PY) -c "import clotclf_core, torch, timm, openslide, tifffile, albumentations, huggingface_hub, transformers, lightly"
	touch $(STAMP)

# The main job: generate (or reuse) the synthetic demo cohort in clotclf-demo/, tile it, train a
# small CCT with a patient-level split, and print the metrics and where the run directory is.
demo: $(STAMP)
	$(VENV)/bin/clotclf list-plugins
	$(VENV)/bin/clotclf train --backbone cct

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
