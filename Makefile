# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
# PILLOW=simd (`make PILLOW=simd run|test|bench|bench-peers`): the same targets from .venv-simd, whose
# Pillow is pillow-simd (AVX2 resampling: the resize ~6x, a cold JPEG render ~1.45x faster; built from
# source: needs gcc and the -dev packages in README "Faster resize: pillow-simd"). Without it, nothing changes.
PILLOW ?= stock
PILLOW_SIMD := pillow-simd==12.1.1.post0
# Debian 12's libavif is too old for pillow-simd's AVIF codec: this plugin brings its own (imgproxy/avif.py)
AVIF_PLUGIN := pillow-avif-plugin==1.6.0
ifeq ($(PILLOW),simd)
VENV ?= .venv-simd
# pip puts stock Pillow back on every install (pillow-simd is another name; the HEIF and JXL plugins
# require "pillow"): swap it after each one, from a wheel built once (not from pip's cache, which
# ignores CC) and kept in the venv. Reinstalled every time: stock Pillow, put back over it, shares its files.
define swap_pillow
ls $(VENV)/wheels/pillow_simd-*.whl >/dev/null 2>&1 || CC="cc -mavx2" $(PY) -m pip wheel -q --no-cache-dir --no-deps --no-binary pillow-simd $(PILLOW_SIMD) -w $(VENV)/wheels
$(PY) -m pip uninstall -q -y pillow
$(PY) -m pip install -q --no-deps --force-reinstall --find-links $(VENV)/wheels $(PILLOW_SIMD) $(AVIF_PLUGIN)
endef
else ifeq ($(PILLOW),stock)
VENV ?= .venv
swap_pillow :=
else
$(error PILLOW is "stock" (default) or "simd", not "$(PILLOW)")
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.test-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: install lint run test bench bench-hitcost bench-peers bench-cdn bench-cdn-mix bench-quality bench-soak bench-formats bench-bytes bench-jpeg bench-autoquality bench-scaling bench-simd bench-peers-simd clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	$(swap_pillow)
	touch $(STAMP)

# `make run` needs only the service; the test tools (browser driver, linters) come with `make test`.
install: $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	$(swap_pillow)
	touch $(TEST_STAMP)

$(BENCH_STAMP): $(TEST_STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(swap_pillow)
	touch $(BENCH_STAMP)

# Serves config.toml on http://127.0.0.1:8080 with generated demo images.
run: install
	$(PY) -m imgproxy serve --config config.toml

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

# Self-only benchmark: server pinned to core 0, wrk on core 1 (BENCH_SECONDS=15 per workload);
# then the same photos from local disk vs a SeaweedFS bucket ([storage] backend = "s3").
bench: $(BENCH_STAMP)
	$(PY) bench/run.py
	$(PY) bench/run.py --storage s3

# Instructions per cache hit under callgrind, local vs s3 backend: a figure the machine's noise
# does not move (requests/s on a shared 2-core machine swing by 20-50 %).
bench-hitcost: $(BENCH_STAMP)
	$(PY) bench/hitcost.py

# imgproxy vs thumbor vs ipx per photo over the corpus set (+ nginx for hits), one run; peers install
# into /tmp/imgproxy-bench/peers. BENCH_SECONDS (per cell, default 4), BENCH_PHOTOS, BENCH_SERVERS:
# bench/README.md.
bench-peers: $(BENCH_STAMP)
	$(PY) bench/peers.py

# The same with this service twice in one run, stock Pillow and pillow-simd (.venv-simd, built here).
bench-peers-simd: $(BENCH_STAMP)
	$(MAKE) PILLOW=simd install
	$(PY) bench/peers.py --servers imgproxy,simd,thumbor,ipx,nginx

# Our server on 1 and 2 cores: processes (serve --workers) x render threads, cold JPEG renders,
# with the server's and wrk's CPU time (wrk shares a core once the server has both).
bench-scaling: $(BENCH_STAMP)
	$(PY) bench/scaling.py

# Hit throughput through the nginx edge of deploy/nginx vs one replica directly.
bench-cdn: $(BENCH_STAMP)
	$(PY) bench/cdn.py

# Edge hit share of a browsing mix, edge key before/after issue 17 (Accept class only where it matters).
bench-cdn-mix: $(BENCH_STAMP)
	$(PY) bench/cdn.py mix

# Memory over 5 minutes of distinct cold renders (BENCH_SOAK_SECONDS=300): peak and drift.
bench-soak: $(BENCH_STAMP)
	$(PY) bench/soak.py

# SSIM and time of resize pipelines (ours at each reducing_gap vs thumbor's), and encoder settings.
bench-quality: $(BENCH_STAMP)
	$(PY) bench/quality.py

# JPEG XL vs AVIF vs WebP vs JPEG at the configured qualities: bytes, encode time, SSIM per photo.
bench-formats: $(BENCH_STAMP)
	$(PY) bench/formats.py

# Bytes at the same look (SSIMULACRA2): ours at q80 and quality=auto, auto_format first vs smallest,
# vs thumbor and ipx at q80, every corpus photo at 480/1080/1920 px, with SPEC §11's goal check.
# Then what quality=auto costs: its render CPU time over the configured quality's, per format.
bench-bytes: $(BENCH_STAMP)
	$(PY) bench/bytes.py
	$(PY) bench/autocost.py

# libjpeg-turbo q80 vs jpegli and mozjpeg's lossless pass at equal SSIMULACRA2: bytes and CPU time.
bench-jpeg: $(BENCH_STAMP)
	$(PY) bench/jpeg_encoders.py

# quality=auto: its score and target judged by SSIMULACRA2 per photo and width, then the server path.
bench-autoquality: $(BENCH_STAMP)
	$(PY) bench/autoquality.py --widths 480,1080,1920 --save /tmp/autoquality.json
	$(PY) bench/autoquality.py --server

# Stock Pillow (.venv) vs pillow-simd (.venv-simd, built here): our render per photo, interleaved rounds.
bench-simd: $(BENCH_STAMP)
	$(MAKE) PILLOW=simd install
	$(PY) bench/simd.py --simd .venv-simd/bin/python

clean:
	rm -rf cache images/demo .pytest_cache .hypothesis
