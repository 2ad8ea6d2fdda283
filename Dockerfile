# syntax=docker/dockerfile:1
# The streamrec image: one image for every role (topics, trainer, worker, simulator); the role is
# the subcommand, e.g. `docker run streamrec:local simulate --rate 200`.
#
#   docker build -t streamrec:local .                      # CPU: torch CPU wheels + faiss-cpu
#   docker build -t streamrec:local-gpu --build-arg EXTRAS=gpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .   # faiss-gpu
#
# Build args:
#   EXTRAS           optional-dependency groups of pyproject.toml, comma-separated ("" = none:
#                    faiss-cpu). `gpu` installs `.[gpu]`, then removes faiss-cpu so that
#                    faiss-gpu alone provides the `faiss` module (both wheels ship it).
#   TORCH_INDEX_URL  where torch comes from; the default CPU index keeps the image ~1 GB smaller
#                    than PyPI's CUDA build. Empty: whatever PyPI resolves.

ARG PYTHON_VERSION=3.11

# ---- build: a self-contained virtualenv in /opt/venv ----------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ARG EXTRAS=""
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers only in this stage, for any dependency without a wheel for this platform.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone (with a stub package), so that editing the code
# does not reinstall torch. The stub is uninstalled again; the real package follows below.
COPY pyproject.toml ./
RUN pip install --upgrade pip setuptools wheel \
 && if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch; fi \
 && mkdir -p streamrec && touch streamrec/__init__.py \
 && pip install ".${EXTRAS:+[$EXTRAS]}" \
 && case ",$EXTRAS," in *,gpu,*) pip uninstall -y faiss-cpu && pip install --force-reinstall --no-deps faiss-gpu ;; esac \
 && pip uninstall -y streamrec \
 && rm -rf streamrec build *.egg-info

COPY . .
RUN pip install --no-deps ".${EXTRAS:+[$EXTRAS]}" \
 && streamrec --version

# ---- runtime ----------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
ARG EXTRAS=""
LABEL org.opencontainers.image.title="streamrec" \
      org.opencontainers.image.description="Streaming recommendations for online shops" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.streamrec.extras="${EXTRAS}"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMREC_DATA_DIR=/data \
    STREAMREC_WEB_HOST=0.0.0.0 \
    STREAMREC_WEB_PORT=6066

# Non-root user. /data is created owned by it, so a fresh named volume mounted there inherits
# that ownership (model registry, worker state).
RUN groupadd --system --gid 10001 streamrec \
 && useradd --system --uid 10001 --gid streamrec --home-dir /home/streamrec --create-home \
        --shell /usr/sbin/nologin streamrec \
 && mkdir -p /data \
 && chown streamrec:streamrec /data

COPY --from=build /opt/venv /opt/venv

USER streamrec
WORKDIR /home/streamrec
VOLUME ["/data"]
EXPOSE 6066

# The worker's web server answers GET /health. The slim image has no curl, so Python does it;
# shell form so that STREAMREC_WEB_PORT is read when the check runs, not when the image is built.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=5 \
    CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:${STREAMREC_WEB_PORT:-6066}/health', timeout=4).status == 200 else 1)"

ENTRYPOINT ["streamrec"]
CMD ["worker"]
