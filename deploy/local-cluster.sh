#!/usr/bin/env bash
# A local multi-process obr, mutual TLS between its components: a private
# redis-server (rediss:// only, client certificates required), two signers
# and two relays sharing it (and sharing the SQLite directory and signer
# database files, which WAL mode allows on one machine). `obr-relay pki
# init` makes the deployment's two CAs and their certificates on the first
# start (kept afterwards): relay⇄signer, and Redis. The relays serve plain
# HTTP on loopback to browsers and the agent. Prints where everything is;
# Ctrl+C stops it all. Usage: deploy/local-cluster.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "${1:-obr-cluster}/relay" "${1:-obr-cluster}/signer"
data=$(realpath "${1:-obr-cluster}")
# Debug builds by default (fast to build); OBR_PROFILE=release for speed.
profile=${OBR_PROFILE:-dev}
cargo build -q --profile "$profile" -p obr-relay -p obr-signer -p obr-agent
dir=$profile; [ "$profile" = dev ] && dir=debug
bin=${CARGO_TARGET_DIR:-target}/$dir

pki=$data/pki
"$bin/obr-relay" pki init --dir "$pki" --host 127.0.0.1 --host localhost >/dev/null
# Owner approvals are MACed by the relays and checked by the signers.
[ -f "$data/approval.key" ] || "$bin/obr-signer" new-kek --kek-file "$data/approval.key" >/dev/null 2>&1

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
# Wait until 127.0.0.1:$1 accepts connections; if the process ($2) died
# first, show its log ($3) and stop everything.
ready() {
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || { echo "failed to start; $3:" >&2; tail -n 20 "$3" >&2; exit 1; }
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1 after 10 s; $3:" >&2; tail -n 20 "$3" >&2; exit 1
}

redis-server --bind 127.0.0.1 --port 0 --tls-port 6390 \
  --tls-cert-file "$pki/redis.pem" --tls-key-file "$pki/redis.key" \
  --tls-ca-cert-file "$pki/redis-ca.pem" --tls-auth-clients yes \
  --save "" --appendonly no --logfile "$data/redis.log" & pids+=($!)
ready 6390 $! "$data/redis.log"

for port in 7401 7402; do
  "$bin/obr-signer" --listen "127.0.0.1:$port" \
    --database-url "sqlite://$data/signer/signer.db?mode=rwc" \
    --kek-file "$data/signer/kek.key" \
    --tls-cert "$pki/signer.pem" --tls-key "$pki/signer.key" --client-ca "$pki/ca.pem" \
    --approval-key-file "$data/approval.key" \
    >"$data/signer-$port.log" 2>&1 & pids+=($!)
  ready "$port" $! "$data/signer-$port.log"
done
for port in 8081 8082; do
  "$bin/obr-relay" --listen "127.0.0.1:$port" --data-dir "$data/relay" --demo-org \
    --redis-url rediss://127.0.0.1:6390/ --redis-ca "$pki/redis-ca.pem" \
    --redis-client-cert "$pki/redis-client.pem" --redis-client-key "$pki/redis-client.key" \
    --signer https://127.0.0.1:7401 --signer https://127.0.0.1:7402 \
    --signer-ca "$pki/ca.pem" \
    --signer-client-cert "$pki/relay.pem" --signer-client-key "$pki/relay.key" \
    --approval-key-file "$data/approval.key" \
    >"$data/relay-$port.log" 2>&1 & pids+=($!)
  ready "$port" $! "$data/relay-$port.log"
done
echo "relays: http://127.0.0.1:8081 http://127.0.0.1:8082 (sessions shared through rediss://127.0.0.1:6390)"
echo "signers: https://127.0.0.1:7401 https://127.0.0.1:7402 (mutual TLS); certificates in $pki/"
echo "logs and demo-org.json under $data/"
echo "agent: $bin/obr-agent --control $data/agent.ctl run --relay http://127.0.0.1:8081 --hid-socket $data/agent.hid"
wait
