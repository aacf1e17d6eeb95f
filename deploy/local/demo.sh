#!/usr/bin/env bash
# Ferry in one command: installs what is missing (deploy/local/setup.sh), starts two local
# registries (127.0.0.1:5001 = "src", 127.0.0.1:5002 = "dst"), pushes sample images to src with
# skopeo, shows the drift, syncs with ferry, and shows that a resync moves nothing.
# Everything lives in a temp dir and the registries stop when the script ends.
set -euo pipefail
cd "$(dirname "$0")/../.."

bash deploy/local/setup.sh --no-nextest
echo "==> building ferry"
cargo build --release -q -p ferry-replicator -p ferry-testkit
FERRY=target/release/ferry

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

for port in 5001 5002; do
  mkdir -p "$work/$port"
  cat > "$work/$port/config.yml" <<YAML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $work/$port/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port, secret: demo}
YAML
  docker-registry serve "$work/$port/config.yml" >"$work/$port/log" 2>&1 &
  pids+=($!)
done
for port in 5001 5002; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/v2/" >/dev/null || { echo "registry on :$port did not start:"; cat "$work/$port/log"; exit 1; }
done

echo "==> pushing sample images to src with skopeo"
layout=$(target/release/ferry-sample "$work/layout")
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$work/policy.json"
push() { skopeo --policy "$work/policy.json" copy -q --all --preserve-digests --dest-tls-verify=false "oci:$layout:$1" "docker://127.0.0.1:5001/$2"; }
push app-v1 demo/app:v1
push app-v2 demo/app:v2
push multi demo/multi:1.0

echo "==> ferry diff (drift expected, exit 1)"
$FERRY diff --config policies/local-demo.json || true
echo "==> ferry sync"
$FERRY sync --config policies/local-demo.json
echo "==> ferry sync again (nothing to move)"
$FERRY sync --config policies/local-demo.json
echo "==> ferry diff (no drift, exit 0)"
$FERRY diff --config policies/local-demo.json
echo "==> independent check with skopeo"
for ref in demo/app:v1 demo/app:v2 demo/multi:1.0; do
  a=$(skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:5001/$ref" | sha256sum | cut -d' ' -f1)
  b=$(skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:5002/$ref" | sha256sum | cut -d' ' -f1)
  [ "$a" = "$b" ] && echo "  $ref sha256:$a on both" || { echo "  $ref differs!"; exit 1; }
done
