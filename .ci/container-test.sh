#!/usr/bin/env bash
# Slow tier (`make container-test`, minutes): build the CPU image with podman on a local Debian base, run it as a
# Hugging Face Space would (platform PORT, accounts from the environment, a volume on /data), and check it:
# the page answers, four panels stream through gradio_client (peak memory under 12 GiB), a vote survives a
# restart, the app runs as non-root, the HEALTHCHECK passes; prints the build time and the image size.
# Needs root (rootful podman + runc, as ../shared/ENVIRONMENT.md describes). docs/deploy.md records the last run.
#
#   .ci/container-test.sh                      # IMAGE, BASE_IMAGE, PORT, CACHE and PYTHON may be set in the environment
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/adapter-arena:test}
BASE_IMAGE=${BASE_IMAGE:-localhost/bookworm-py311}  # made below with debootstrap when missing
PORT=${PORT:-17860}                                 # host network: pick ports nobody else uses
VLLM_PORT=${VLLM_PORT:-18011}
CACHE=${CACHE:-/var/cache/adapter-arena}           # the Debian root file system and podman's containers.conf
PYTHON=${PYTHON:-.venv/bin/python}                  # for the checker: needs gradio_client (make install)
NAME=arena-container-test
VOLUME=arena-container-test-data
MEMORY_LIMIT_GIB=12
ACCOUNT="tester:container-test-$$"

log() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root: rootful podman with runc is what works on these machines"
[ -x "$PYTHON" ] || fail "$PYTHON not found: run make install first (or set PYTHON)"

missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing podman, runc, debootstrap"
  apt-get update && apt-get install -y --no-install-recommends podman runc debootstrap uidmap fuse-overlayfs
fi

# crun is refused here (rlimits, hybrid cgroups): runc, and no default ulimits.
mkdir -p "$CACHE"
export CONTAINERS_CONF="$CACHE/containers.conf"
printf '[containers]\ndefault_ulimits = []\n' >"$CONTAINERS_CONF"
pod() { podman --runtime runc "$@"; }

if ! pod image exists "$BASE_IMAGE"; then
  [ "$BASE_IMAGE" = localhost/bookworm-py311 ] || fail "base image $BASE_IMAGE not found"
  log "making $BASE_IMAGE from Debian packages (debootstrap, ~1-2 min)"
  rm -rf "$CACHE/rootfs.partial"
  debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-pip,make,ca-certificates \
    bookworm "$CACHE/rootfs.partial" http://deb.debian.org/debian
  tar -C "$CACHE/rootfs.partial" -c . | pod import - "$BASE_IMAGE"
  rm -rf "$CACHE/rootfs.partial"
fi

# This machine's package-index settings, mounted read-only into the build (never copied into the image): pip's
# configuration as one file, and each file and folder it names (CA bundle, constraints, local wheels and indexes);
# apt's configuration folder when the base image is ours (the local Debian mirror needs its settings).
work=$(mktemp -d)
cleanup() {
  pod rm -f "$NAME" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
pip config list 2>/dev/null | "$PYTHON" -c '
import ast, re, sys
sections = {}
for line in sys.stdin:
    match = re.match(r"^([a-z]+)\.([a-z-]+)=(.*)$", line.strip())
    if match:
        sections.setdefault(match[1], {})[match[2]] = ast.literal_eval(match[3])
for section, values in sections.items():
    print(f"[{section}]")
    print("\n".join(f"{key} = {value}" for key, value in values.items()))
' >"$work/pip.conf"
mounts=(-v "$work/pip.conf:/etc/pip.conf:ro")
while read -r item; do
  [ -e "$item" ] || continue
  case $item in */simple | */simple/) item=$(dirname "$item") ;; esac  # an index's pages link to ../../files/
  mounts+=(-v "$item:$item:ro")
done < <(grep -oE '(file://)?/[^ ]+' "$work/pip.conf" | sed 's|^file://||')
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
extra_index=$(pip config get global.extra-index-url 2>/dev/null || true)
[ -n "$extra_index" ] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra_index")
[ "$BASE_IMAGE" = localhost/bookworm-py311 ] && mounts+=(-v /etc/apt/apt.conf.d:/etc/apt/apt.conf.d:ro)

log "building $IMAGE on $BASE_IMAGE"
started=$(date +%s)
# --format docker: the OCI format has no HEALTHCHECK, and podman would drop it.
pod build --format docker --network=host "${build_args[@]}" "${mounts[@]}" -t "$IMAGE" .
build_s=$(( $(date +%s) - started ))
size=$(pod image inspect --format '{{.Size}}' "$IMAGE")
healthcheck=$(pod image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" 2>/dev/null || true)
if [ -z "$healthcheck" ] || [ "$healthcheck" = null ]; then fail "the image has no HEALTHCHECK"; fi

log "running it (PORT=$PORT as a platform sets it; an account from the environment; volume $VOLUME on /data)"
pod volume rm -f "$VOLUME" >/dev/null 2>&1 || true
pod volume create "$VOLUME" >/dev/null
pod rm -f "$NAME" >/dev/null 2>&1 || true
# vLLM's CPU engine needs ~400 MiB of /dev/shm (its message queues); the 64 MiB default of docker and podman is too small.
pod run -d --name "$NAME" --network=host --shm-size=1g -v "$VOLUME:/data" \
  -e PORT="$PORT" -e ARENA_VLLM__PORT="$VLLM_PORT" -e ARENA_AUTH__USERS="$ACCOUNT" -e ARENA_AUTH__ADMINS=tester \
  "$IMAGE" >/dev/null

wait_healthy() {  # the HEALTHCHECK's own command, run by podman, until it passes (vLLM loads first: ~1-2 min)
  local deadline=$(( $(date +%s) + 900 ))
  until pod healthcheck run "$NAME" >/dev/null 2>&1; do
    [ "$(pod inspect --format '{{.State.Running}}' "$NAME")" = true ] || { pod logs "$NAME" | tail -40; fail "the container stopped"; }
    [ "$(date +%s)" -lt "$deadline" ] || { pod logs "$NAME" | tail -40; fail "not healthy within 15 min"; }
    sleep 5
  done
}
started=$(date +%s)
wait_healthy
ready_s=$(( $(date +%s) - started ))
echo "healthy after ${ready_s}s: $(pod healthcheck run "$NAME")" >&2

uid=$(pod exec "$NAME" id -u)
[ "$uid" != 0 ] || fail "the app runs as root"
data=$(pod exec "$NAME" sh -c 'ls /data')

cid=$(pod inspect --format '{{.Id}}' "$NAME")
memdir=$(find /sys/fs/cgroup -maxdepth 6 -type d -name "*$cid*" \( -path '*/memory/*' -o -path '/sys/fs/cgroup/unified/*' \) \
  -exec sh -c 'test -f "$1/memory.usage_in_bytes" -o -f "$1/memory.current"' _ {} \; -print 2>/dev/null | head -1)
[ -n "$memdir" ] || memdir=$(find /sys/fs/cgroup -maxdepth 6 -type d -name "*$cid*" -print | head -1)
[ -n "$memdir" ] || fail "no cgroup folder for container $cid"

log "four panels streaming, then an arena round and a vote (memory from $memdir)"
answer=$("$PYTHON" .ci/container_check.py answer --url "http://127.0.0.1:$PORT/" --auth "$ACCOUNT" --memory-dir "$memdir")
echo "$answer"
peak=$("$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1])["memory_peak_while_streaming_gib"])' "$answer")
"$PYTHON" -c "import sys; sys.exit(0 if $peak < $MEMORY_LIMIT_GIB else 1)" || fail "peak memory $peak GiB >= $MEMORY_LIMIT_GIB GiB"

log "restarting the container: the vote must still be there"
pod restart -t 90 "$NAME" >/dev/null  # a clean stop (vLLM included) took ~40 s here; the default 10 s ends in SIGKILL
wait_healthy
votes=$("$PYTHON" .ci/container_check.py votes --url "http://127.0.0.1:$PORT/" --auth "$ACCOUNT" --expect 1)
echo "$votes"
mountpoint=$(pod volume inspect --format '{{.Mountpoint}}' "$VOLUME")
in_db=$("$PYTHON" -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from votes").fetchone()[0])' \
  "$mountpoint/arena.db")
[ "$in_db" = 1 ] || fail "the volume's arena.db holds $in_db vote(s), expected 1"

log "figures"
cat <<EOF
build: ${build_s}s (on $BASE_IMAGE; cached layers make a rebuild faster)
image size: $(( size / 1000000 )) MB
healthy after start: ${ready_s}s (HEALTHCHECK passed); uid in the container: $uid; /data holds: $(echo "$data" | tr '\n' ' ')
four panels: $answer
after restart: $votes; votes in the volume's arena.db: $in_db
all container checks passed
EOF
