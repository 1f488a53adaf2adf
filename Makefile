# detkit: `make demo` and `make test` each do the whole set-up from a fresh clone.
# PY_BOOT is the interpreter that creates the venv; TORCH_PKGS pins the torch build these machines
# have on local disk (setup.cfg itself only declares ranges).
PY_BOOT    ?= python3
VENV       ?= .venv
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
PY          = $(VENV)/bin/python
PIP         = $(PY) -m pip
PLUGINS     = $(sort $(wildcard plugins/*/setup.cfg))
PLUGIN_SRC  = $(shell find plugins -type f \( -name '*.py' -o -name '*.cfg' -o -name '*.toml' \) -not -path '*/build/*' -not -path '*.egg-info*' 2>/dev/null)
STAMP       = $(VENV)/.detkit-installed
DEMO_DIR   ?= data/shapes
PYTEST_ARGS ?=

.PHONY: install test demo pretrain-demo bench clean help

help:
	@echo "make demo    - create $(VENV), install everything, run the default job (synthetic shapes)"
	@echo "make test    - create $(VENV) if missing, install everything, run the test suite"
	@echo "make install - create $(VENV) and install detkit (test, fast-eval, deploy, serve, tracker and classic extras) and plugins/*"
	@echo "make bench   - run tools/bench.py (all benchmarks)"
	@echo "make pretrain-demo - classifier pre-training vs from scratch on the shapes (README; 1-2 h on 2 CPUs)"

$(PY):
	$(PY_BOOT) -m venv $(VENV)

# Re-installs when packaging metadata (entry points!) or a plugin changes.
$(STAMP): $(PY) setup.cfg pyproject.toml $(PLUGIN_SRC)
	$(PIP) install $(TORCH_PKGS)
	$(PIP) install -e '.[test,fast-eval,deploy,serve,tensorboard,mlflow,wandb,classic]'
	@for p in $(dir $(PLUGINS)); do \
		echo "installing plugin $$p"; \
		$(PIP) install "./$$p" || exit 1; \
	done
	@# opencv-python-headless and the selective-search plugin's opencv-contrib-python-headless share
	@# one cv2/ folder; if the plain wheel was (re)installed last, put the contrib files back on top.
	@$(PY) -c "import cv2; cv2.ximgproc.segmentation" 2>/dev/null || \
	  $(PIP) install --force-reinstall --no-deps \
	    "opencv-contrib-python-headless==$$($(PY) -c 'import importlib.metadata as m; print(m.version("opencv-python-headless"))')"
	@touch $(STAMP)

install: $(STAMP)

test: install
	DETKIT_SLOW=$${DETKIT_SLOW:-0} $(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py

# The pre-training comparison of the README: a backbone pre-trained by `detkit classify` on shape crops
# vs the same detector from scratch, then the README tables.
DETKIT = $(PY) -m detkit
CLS_RUN = work_dirs/classify_shapes_resnet18
pretrain-demo: install
	$(DETKIT) data make-shapes $(DEMO_DIR) --num 600 --seed 0
	$(DETKIT) data make-shapes data/shapes_cls --mode classification --num 6000 --seed 1 --size 48
	$(DETKIT) classify train configs/classify_shapes_resnet18.py
	$(DETKIT) classify eval configs/classify_shapes_resnet18.py $(CLS_RUN)/best_top1.pth \
	    --metrics-out $(CLS_RUN)/eval_metrics.json --confusion-out $(CLS_RUN)/eval_confusion.png
	$(DETKIT) train configs/yolov1_shapes_resnet18.py --work-dir work_dirs/yolov1_shapes_resnet18_scratch
	$(DETKIT) train configs/yolov1_shapes_resnet18.py --work-dir work_dirs/yolov1_shapes_resnet18_pretrained \
	    --set model.backbone.pretrained=$(CLS_RUN)/best_top1.pth
	$(PY) tools/collect_results.py

bench: install
	$(PY) tools/bench.py all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
