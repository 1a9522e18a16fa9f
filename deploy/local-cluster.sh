#!/usr/bin/env bash
# A local multi-process obr: a private redis-server, two signers and two
# relays sharing it (and sharing the SQLite directory and signer database
# files, which WAL mode allows on one machine). Prints where everything is;
# Ctrl+C stops it all. Usage: deploy/local-cluster.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-obr-cluster}
mkdir -p "$data/relay" "$data/signer"
# Debug builds by default (fast to build); OBR_PROFILE=release for speed.
profile=${OBR_PROFILE:-dev}
cargo build -q --profile "$profile" -p obr-relay -p obr-signer -p obr-agent
dir=$profile; [ "$profile" = dev ] && dir=debug
bin=${CARGO_TARGET_DIR:-target}/$dir

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

redis-server --bind 127.0.0.1 --port 6390 --save "" --appendonly no \
  --logfile "$PWD/$data/redis.log" & pids+=($!)

for port in 7401 7402; do
  "$bin/obr-signer" --listen "127.0.0.1:$port" \
    --database-url "sqlite://$data/signer/signer.db?mode=rwc" \
    --kek-file "$data/signer/kek.key" >"$data/signer-$port.log" 2>&1 & pids+=($!)
  sleep 1
done
for port in 8081 8082; do
  "$bin/obr-relay" --listen "127.0.0.1:$port" --data-dir "$data/relay" --demo-org \
    --redis-url redis://127.0.0.1:6390/ \
    --signer http://127.0.0.1:7401 --signer http://127.0.0.1:7402 \
    >"$data/relay-$port.log" 2>&1 & pids+=($!)
  sleep 1
done
echo "relays: http://127.0.0.1:8081 http://127.0.0.1:8082 (sessions shared through redis :6390)"
echo "signers: 127.0.0.1:7401 127.0.0.1:7402; logs and demo-org.json under $data/"
echo "agent: $bin/obr-agent --control $data/agent.ctl run --relay http://127.0.0.1:8081 --hid-socket $data/agent.hid"
wait
