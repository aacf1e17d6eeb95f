#!/usr/bin/env bash
# Ferry's daemon in one command: two regions on this machine, an image pushed in one shows up in
# the other by itself.
#
# Each region runs its own docker-registry, its own queue (region a: redis-server, region b:
# valkey-server), a ferry-agent and a ferry worker; the agents forward events to each other over
# gRPC (ferry.v1.Events/Forward). The policy pulls `demo/**` from region a's registry into region
# b's, so region b's worker does the copying when region a's agent forwards the push.
#
# It pushes a two-platform image and its signature into region a with skopeo, waits until region b
# serves the same digests, prints the replication lag, the bytes moved and the execution as
# `ferry admin` shows it, then deletes the image in region a and waits for the delete to reach
# region b. It ends by itself (exit 0 when everything arrived) and stops everything it started.
#
# Usage: bash deploy/local/quickstart.sh [--keep]
#   --keep  leave both regions running at the end and print how to push to them (Ctrl-C stops).
# FERRY_PROFILE=debug uses a debug build (what the test suite runs it with); default: release.
set -euo pipefail
cd "$(dirname "$0")/../.."

keep=false
case "${1:-}" in
  --keep) keep=true ;;
  "") ;;
  *) echo "usage: bash deploy/local/quickstart.sh [--keep]" >&2; exit 2 ;;
esac

bash deploy/local/setup.sh --no-nextest
profile=${FERRY_PROFILE:-release}
case "$profile" in
  release) flags=(--release -p ferry-replicator -p ferry-agent -p ferry-testkit) ;;
  # The workspace build the README's test command makes (nothing to rebuild after it).
  debug) flags=(--workspace) ;;
  *) echo "FERRY_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
echo "==> building ferry ($profile)"
cargo build -q "${flags[@]}"
bin=$PWD/target/$profile

work=$(mktemp -d)
echo "    logs in $work"
pids=()
cleanup() {
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port nothing listens on (and that this script has not handed out yet).
taken=" "
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    case "$taken" in *" $p "*) continue ;; esac
    (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    taken="$taken$p "
    echo "$p"
    return
  done
}
# Seconds between two `date +%s.%N` stamps, one decimal.
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
fail() {
  echo "error: $*" >&2
  for f in "$work"/*/*.log; do echo "--- ${f#"$work"/} (last lines)" >&2; tail -n 5 "$f" >&2; done
  exit 1
}
# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local secs=$1; shift
  for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

declare -A reg_port agent_port forward_port worker_port admin_port queue_port
for r in a b; do
  reg_port[$r]=$(free_port); agent_port[$r]=$(free_port); forward_port[$r]=$(free_port)
  worker_port[$r]=$(free_port); admin_port[$r]=$(free_port); queue_port[$r]=$(free_port)
done
webhook_token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FERRY_FORWARD_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FERRY_ADMIN_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FERRY_WEBHOOK_TOKEN=$webhook_token

cat > "$work/config.json" <<JSON
{
  "regions": [
    {"name": "a", "forward_url": "http://127.0.0.1:${forward_port[a]}"},
    {"name": "b", "forward_url": "http://127.0.0.1:${forward_port[b]}"}
  ],
  "registries": [
    {"name": "registry-a", "url": "http://127.0.0.1:${reg_port[a]}", "insecure": true, "region": "a"},
    {"name": "registry-b", "url": "http://127.0.0.1:${reg_port[b]}", "insecure": true, "region": "b"}
  ],
  "policies": [
    {"name": "a-to-b", "description": "pull demo/** from region a into region b",
     "mode": "pull", "src_registry": {"name": "registry-a"}, "dest_registry": {"name": "registry-b"},
     "filters": [{"type": "name", "value": "demo/**"}],
     "trigger": {"type": "event_based"}, "replicate_deletion": true}
  ]
}
JSON
"$bin/ferry" policy validate "$work/config.json" >/dev/null

echo "==> starting region a (registry :${reg_port[a]}, redis-server) and region b (registry :${reg_port[b]}, valkey-server)"
for r in a b; do
  mkdir -p "$work/$r/data" "$work/$r/queue"
  cat > "$work/$r/registry.yml" <<YAML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $work/$r/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:${reg_port[$r]}, secret: quickstart-$r}
notifications:
  events: {includereferences: true}
  endpoints:
    - name: ferry
      url: http://127.0.0.1:${agent_port[$r]}/v1/events/distribution?registry=registry-$r
      headers: {Authorization: ["Bearer $webhook_token"]}
      timeout: 2s
      threshold: 5
      backoff: 1s
      ignoredmediatypes: [application/octet-stream]
YAML
  docker-registry serve "$work/$r/registry.yml" > "$work/$r/registry.log" 2>&1 &
  pids+=($!)
done
redis-server --port "${queue_port[a]}" --bind 127.0.0.1 --dir "$work/a/queue" --appendonly yes --save '' \
  > "$work/a/queue.log" 2>&1 &
pids+=($!)
valkey-server --port "${queue_port[b]}" --bind 127.0.0.1 --dir "$work/b/queue" --appendonly yes --save '' \
  > "$work/b/queue.log" 2>&1 &
pids+=($!)
for r in a b; do
  wait_for 10 curl -sf "http://127.0.0.1:${reg_port[$r]}/v2/" || fail "registry of region $r did not start"
  "$bin/ferry-agent" --config "$work/config.json" --redis "redis://127.0.0.1:${queue_port[$r]}/0" \
    --listen "127.0.0.1:${agent_port[$r]}" --region "$r" --forward-listen "127.0.0.1:${forward_port[$r]}" \
    --reconcile-interval 0 > "$work/$r/agent.log" 2>&1 &
  pids+=($!)
  "$bin/ferry" worker --config "$work/config.json" --redis "redis://127.0.0.1:${queue_port[$r]}/0" \
    --listen "127.0.0.1:${worker_port[$r]}" --admin-listen "127.0.0.1:${admin_port[$r]}" \
    --region "$r" --consumer "worker-$r" > "$work/$r/worker.log" 2>&1 &
  pids+=($!)
done
for r in a b; do
  wait_for 60 curl -sf "http://127.0.0.1:${agent_port[$r]}/healthz" || fail "ferry-agent of region $r did not become healthy"
  wait_for 60 curl -sf "http://127.0.0.1:${worker_port[$r]}/healthz" || fail "ferry worker of region $r did not become healthy"
done
echo "    region a: agent :${agent_port[a]} (Forward :${forward_port[a]}), worker :${worker_port[a]}, admin :${admin_port[a]}"
echo "    region b: agent :${agent_port[b]} (Forward :${forward_port[b]}), worker :${worker_port[b]}, admin :${admin_port[b]}"

layout=$("$bin/ferry-sample" "$work/layout")
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$work/policy.json"
sk() { skopeo --policy "$work/policy.json" "$@"; }
digest_of() { # registry port, reference -> digest of the manifest it serves, or nothing
  sk inspect --raw --tls-verify=false "docker://127.0.0.1:$1/$2" 2>/dev/null | sha256sum | cut -d' ' -f1
}

echo "==> pushing demo/app:1.0 (two platforms) and its signature to region a with skopeo"
start=$(date +%s.%N)
sk copy -q --all --preserve-digests --dest-tls-verify=false "oci:$layout:multi" "docker://127.0.0.1:${reg_port[a]}/demo/app:1.0"
index=$(digest_of "${reg_port[a]}" demo/app:1.0)
sig_tag="sha256-$index.sig"
sk copy -q --preserve-digests --dest-tls-verify=false "oci:$layout:multi-sig" "docker://127.0.0.1:${reg_port[a]}/demo/app:$sig_tag"
pushed=$(date +%s.%N)
echo "    pushed in $(seconds "$start" "$pushed") s; index sha256:$index"

echo "==> waiting for region b to serve the same digests (nothing is run by hand)"
arrived() {
  [ "$(digest_of "${reg_port[b]}" demo/app:1.0)" = "$index" ] &&
  [ "$(digest_of "${reg_port[b]}" "demo/app:$sig_tag")" = "$(digest_of "${reg_port[a]}" "demo/app:$sig_tag")" ]
}
wait_for 60 arrived || fail "region b does not serve demo/app:1.0 and its signature after 60 s"
done_at=$(date +%s.%N)
echo "    region b serves demo/app:1.0 = sha256:$index (both platforms) and its signature, $(seconds "$pushed" "$done_at") s after the push"

metric() { # port, metric name -> the sum of its samples (any labels)
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '{ split($1, name, "{") } name[1] == m { s += $2 } END { if (s == int(s)) printf "%d", s; else printf "%.3f", s }'
}
lag_sum=$(metric "${worker_port[b]}" ferry_replication_lag_seconds_sum)
lag_count=$(metric "${worker_port[b]}" ferry_replication_lag_seconds_count)
echo "==> what region b's worker reports (/metrics on :${worker_port[b]})"
echo "    jobs: $(metric "${worker_port[b]}" ferry_jobs_total), copied: $(awk -v b="$(metric "${worker_port[b]}" ferry_bytes_total)" 'BEGIN { printf "%.1f MiB", b / 1048576 }'), replication lag: $(awk -v s="$lag_sum" -v n="$lag_count" 'BEGIN { printf "%.2f", n ? s / n : 0 }') s on average over $lag_count job(s) (event time to tag verified)"
echo "    region a forwarded $(metric "${agent_port[a]}" ferry_forward_events_total) event(s) to region b over gRPC"
echo "==> ferry admin --endpoint http://127.0.0.1:${admin_port[b]} executions list"
"$bin/ferry" admin --endpoint "http://127.0.0.1:${admin_port[b]}" executions list || true

echo "==> deleting demo/app:1.0 in region a; waiting for the delete to reach region b"
sk delete --tls-verify=false "docker://127.0.0.1:${reg_port[a]}/demo/app:1.0"
gone() { ! sk inspect --raw --tls-verify=false "docker://127.0.0.1:${reg_port[b]}/demo/app:1.0" >/dev/null 2>&1; }
wait_for 60 gone || fail "region b still serves demo/app:1.0 60 s after the delete in region a"
echo "    region b no longer serves demo/app:1.0"

if $keep; then
  cat <<EOF

Both regions keep running until Ctrl-C (everything lives in $work):
  push to region a:  skopeo copy --dest-tls-verify=false docker-archive:IMAGE.tar docker://127.0.0.1:${reg_port[a]}/demo/NAME:TAG
  read region b:     skopeo inspect --tls-verify=false docker://127.0.0.1:${reg_port[b]}/demo/NAME:TAG
  executions:        FERRY_ADMIN_TOKEN=$FERRY_ADMIN_TOKEN $bin/ferry admin --endpoint http://127.0.0.1:${admin_port[b]} executions list
  logs:              $work/{a,b}/{agent,worker,registry}.log
EOF
  while :; do sleep 3600; done
fi
echo "==> done: an image, its two platforms and its signature crossed from region a to region b by themselves, and so did the delete"
