#!/usr/bin/env bash
# Slow tier (`make compose-test`, minutes, root): bring compose.yaml up with podman-compose, PostgreSQL profile
# included, and check it: the page answers, four panels stream through the app from the vllm service, a vote lands
# in PostgreSQL and survives an app restart, every service's health check passes; then take it down again.
# Uses the image `make container-test` built (ARENA_IMAGE) and, as Docker Hub cannot be reached here, a PostgreSQL
# stand-in built from .ci/postgres.Dockerfile (POSTGRES_IMAGE). docs/deploy.md ("Compose") records the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

export ARENA_IMAGE=${ARENA_IMAGE:-localhost/adapter-arena:test}
export POSTGRES_IMAGE=${POSTGRES_IMAGE:-localhost/postgres-local}
BASE_IMAGE=${BASE_IMAGE:-localhost/bookworm-py311}
CACHE=${CACHE:-/var/cache/adapter-arena}
PYTHON=${PYTHON:-.venv/bin/python}
export ARENA_PORT=${ARENA_PORT:-17870}
export VLLM_API_KEY="compose-test-$$-key"
export POSTGRES_PASSWORD="compose-test-$$-pw"
export ARENA_DATABASE_URL="postgresql+psycopg://arena:$POSTGRES_PASSWORD@postgres:5432/arena"
export ARENA_AUTH__USERS="alice:compose-test-$$" ARENA_AUTH__ADMINS=alice
ACCOUNT="alice:compose-test-$$"
PROJECT=adapter-arena

log() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (rootful podman with runc)"
[ -x "$PYTHON" ] || fail "$PYTHON not found: run make install first (or set PYTHON)"
mkdir -p "$CACHE"
# podman-compose calls plain `podman`: runc (crun is refused here) comes from the configuration file.
export CONTAINERS_CONF="$CACHE/compose-containers.conf"
printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' >"$CONTAINERS_CONF"
if [ ! -x "$CACHE/compose-venv/bin/podman-compose" ]; then
  log "installing podman-compose into $CACHE/compose-venv"
  python3 -m venv "$CACHE/compose-venv"
  "$CACHE/compose-venv/bin/pip" install --quiet podman-compose==1.6.0
fi
compose() { "$CACHE/compose-venv/bin/podman-compose" --profile postgres "$@"; }

podman image exists "$ARENA_IMAGE" || fail "$ARENA_IMAGE not found: run make container-test first"
if ! podman image exists "$POSTGRES_IMAGE"; then
  log "building the PostgreSQL stand-in $POSTGRES_IMAGE"
  mounts=()
  [ -f /etc/apt/apt.conf.d/99artifact-registry ] &&
    mounts=(-v /etc/apt/apt.conf.d/99artifact-registry:/etc/apt/apt.conf.d/99artifact-registry:ro)
  podman build --format docker --network=host "${mounts[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -f .ci/postgres.Dockerfile -t "$POSTGRES_IMAGE" .ci
fi

cleanup() { compose down -v >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

log "compose up (vllm, app, postgres)"
started=$(date +%s)
compose up -d
url="http://127.0.0.1:$ARENA_PORT/"
until "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)" "$url" 2>/dev/null; do
  [ $(( $(date +%s) - started )) -lt 600 ] || { podman logs --tail 30 "${PROJECT}_app_1"; fail "no page within 10 min"; }
  sleep 3
done
page_s=$(( $(date +%s) - started ))

# The app serves its page before vLLM is ready (external-URL mode waits for the server in the background), so wait
# for every service's health check; podman 4.3 has no systemd timers here: run each on demand.
for service in vllm postgres app; do
  until podman healthcheck run "${PROJECT}_${service}_1" >/dev/null 2>&1; do
    [ $(( $(date +%s) - started )) -lt 600 ] || { podman logs --tail 30 "${PROJECT}_${service}_1"; fail "$service: not healthy"; }
    sleep 3
  done
done
healthy_s=$(( $(date +%s) - started ))

cid=$(podman inspect --format '{{.Id}}' "${PROJECT}_app_1")
memdir=""
while read -r folder; do  # the v1 memory controller's folder, or the v2 one
  if [ -f "$folder/memory.usage_in_bytes" ] || [ -f "$folder/memory.current" ]; then memdir=$folder; break; fi
done < <(find /sys/fs/cgroup -maxdepth 6 -type d -name "*$cid*" 2>/dev/null)
[ -n "$memdir" ] || fail "no memory cgroup folder for the app container"
log "four panels through the app, a vote"
answer=$("$PYTHON" .ci/container_check.py answer --url "$url" --auth "$ACCOUNT" --memory-dir "$memdir")
echo "$answer"
in_pg=$(podman exec -e PGPASSWORD="$POSTGRES_PASSWORD" "${PROJECT}_postgres_1" \
  psql -h 127.0.0.1 -U arena -d arena -tAc "select count(*) from votes")
[ "$in_pg" = 1 ] || fail "PostgreSQL holds $in_pg vote(s), expected 1"

log "restarting the app: the vote is read back from PostgreSQL"
podman restart -t 60 "${PROJECT}_app_1" >/dev/null
until "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)" "$url" 2>/dev/null; do
  sleep 2
done
votes=$("$PYTHON" .ci/container_check.py votes --url "$url" --auth "$ACCOUNT" --expect 1)

cat <<EOF

== figures
page answered ${page_s}s after compose up; vllm, postgres and app all healthy after ${healthy_s}s
four panels: $answer
votes in PostgreSQL: $in_pg; after an app restart: $votes
all compose checks passed
EOF
