# What bench/run.sh and bench/profile.sh share; sourced, not run.

# Builds the release binary and the programs an Embed measurement needs, and names them.
build_hop_binaries() {
    echo "== building (release)"
    cargo build --release --locked --bin llm-registry --example loadgen --example fake_provider \
        --example embed_floor 2>&1 | tail -n 1
    BIN=target/release/llm-registry
    LOADGEN=target/release/examples/loadgen
    FAKE=target/release/examples/fake_provider
    FLOOR=target/release/examples/embed_floor
}

# The `address=` a program started in the background wrote to its log `$1` (waits up to ~5 s;
# empty if it never did).
wait_for_address() {
    local log=$1 found=""
    for _ in $(seq 1 1000); do
        found=$(grep -o 'address=[0-9.:]*' "$log" | head -n 1 | cut -d= -f2 || true)
        [ -n "$found" ] && break
        sleep 0.005
    done
    echo "$found"
}
