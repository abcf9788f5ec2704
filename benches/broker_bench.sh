# Sourced by the benchmarks that run dynsig against the test broker (kafka.sh, latency.sh):
# installs what they need, builds the release binary, and defines the shared helpers.
#   ROOT  the repository; PY  the Python with confluent-kafka; BIN  target/release/dynsig
#   (or $BENCH_BIN, e.g. another build to compare; not DYNSIG_*: dynsig reads those as config)
#   free_port             prints a free loopback TCP port
#   start_tansu ADDR LOG  starts tansu (memory storage) on ADDR in the background; its pid is $!
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/install-test-broker.sh" >/dev/null
"$ROOT/scripts/install-test-python.sh" >/dev/null
PY="$ROOT/.venv-tests/bin/python"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p dynsig
BIN="${BENCH_BIN:-$ROOT/target/release/dynsig}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_tansu() {
    "$ROOT/.broker/tansu" broker --listener-url "tcp://$1" --advertised-listener-url "tcp://$1" \
        --storage-engine memory://tansu/ > "$2" 2>&1 &
}
