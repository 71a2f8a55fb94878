#!/usr/bin/env bash
# seb load test: the same workload direct to a fast local upstream, through nginx as a plain
# reverse proxy, and through seb (http target, TLS) with durable (fsync) and relaxed (flush)
# audit, plus seb's aws target (DynamoDB PutItem re-signed with SigV4, fsync) against the same
# fast upstream, with static identity and with a per-certificate STS session from a delaying
# STS stub (without and with the certificate prepared ahead), in one invocation. The closed
# loops come first: the fixed-rate phases run at 25% of seb-fsync's closed-loop maximum. Prints
# one table and writes it, with the machine's description and the targets against this run's
# own floors, to loadtest/RESULTS.md. See loadtest/README.md.
#
# Usage: loadtest/run.sh [--quick] [--soak SECONDS] [--rate R] [--sts-rate R] [--sts-delay-ms MS] [--no-build]
#                        [--no-bench] [--keep]
#   --quick         short smoke run (a few seconds per phase); writes loadtest/RESULTS.quick.md
#   --soak SECONDS  afterwards, run seb (fsync) at 50% of its measured closed-loop maximum
#                   for SECONDS, sampling RSS every 10 s, and report the growth
#   --rate R        fixed-rate phases at R req/s instead of 25% of seb-fsync's closed-loop
#                   maximum (the latency targets are stated at the 25% rate)
#   --sts-rate R    the seb-aws-sts phases at R req/s instead of half the fixed rate
#   --sts-delay-ms MS  how long the STS stub holds each AssumeRole answer (default 100)
#   --no-build      use the release binaries already in $CARGO_TARGET_DIR
#   --no-bench      do not measure the crypto floor (criterion's `floor` group of
#                   benches/hot_path.rs) before the run; use the results already there
#   --keep          keep the temporary directory (keys, configs, logs, audit logs, pools)
#
# Environment: CARGO_TARGET_DIR (default: the repository's target/); CRITERION_DIR (default
# $CARGO_TARGET_DIR/criterion; when set, implies --no-bench) for the crypto floor;
# LOADTEST_TMP (default /var/tmp).
#
# Sends traffic to 127.0.0.1 only.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
QUICK=0 SOAK=0 BUILD=1 BENCH=1 KEEP=0 RATE_SET="" STS_RATE_SET="" STS_DELAY_MS=100
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --soak) SOAK=${2:?--soak needs SECONDS}; shift ;;
        --rate) RATE_SET=${2:?--rate needs R}; shift ;;
        --sts-delay-ms) STS_DELAY_MS=${2:?--sts-delay-ms needs MS}; shift ;;
        --sts-rate) STS_RATE_SET=${2:?--sts-rate needs R}; shift ;;
        --no-build) BUILD=0 ;;
        --no-bench) BENCH=0 ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

# ---- workload ------------------------------------------------------------------------------
# The fixed rate is set after seb-fsync's closed loop, at this share of its maximum: a fixed
# 2,000 req/s was 16% of it on one host and 50% on another, which moved the latencies 3x.
RATE_SHARE_PCT=25
OPEN_CONNS=64         # connections draining the fixed-rate schedule
PREPARE_LEAD_MS=250   # seb-aws-sts-prepared: each certificate presented this long before use
CLOSED_CONNS=64       # closed-loop back-to-back connections
TARGET=payments       # seb http target name (= the certificates' seb.request.upstream)
REQ_PATH=/v1/x
BODY='{"amount":1250,"currency":"EUR","to":"acct-000123","memo":"invoice 42"}'
# The aws path: a DynamoDB PutItem (JSON 1.0 protocol) as an SDK sends it to AWS_ENDPOINT_URL,
# with the placeholder access key (the broker ignores the agent's signature on mutations and
# takes service and region from the credential scope) and the certificate in
# X-Amz-Security-Token. The upstream is the same fast stub, not DynamoDB.
AWS_TARGET=aws-loadtest
AWS_REGION=eu-west-1
AWS_TABLE=loadtest-orders
AWS_BODY='{"TableName":"loadtest-orders","Item":{"pk":{"S":"order-000042"},"amount":{"N":"1250"},"currency":{"S":"EUR"}}}'
AMZ_DATE=$(date -u +%Y%m%dT%H%M%SZ)
AWS_HEADERS=(
    --header "Content-Type: application/x-amz-json-1.0"
    --header "X-Amz-Target: DynamoDB_20120810.PutItem"
    --header "X-Amz-Date: $AMZ_DATE"
    --header "Authorization: AWS4-HMAC-SHA256 Credential=SEBAGENTPLACEHOLDER/${AMZ_DATE%%T*}/$AWS_REGION/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=$(printf '0%.0s' $(seq 64))"
)
# A closed-loop pool must outlast the phase and its warm-up at the fastest seb path: sized for
# ~26,000 admitted/s (seb-flush reached 15,150/s on a quiet moment of this machine).
if [ "$QUICK" = 1 ]; then
    OPEN_S=4 OPEN_WARM=1 CLOSED_S=4 CLOSED_WARM=1 CLOSED_POOL=130000
    RESULTS=$HERE/RESULTS.quick.md
else
    OPEN_S=20 OPEN_WARM=2 CLOSED_S=15 CLOSED_WARM=2 CLOSED_POOL=450000
    RESULTS=$HERE/RESULTS.md
fi

log() { printf '\n== %s\n' "$*" >&2; }

# ---- processes: everything started here is stopped on exit, failure included -------------
PIDS=()
W=""
POLICY_RC_GUARD=0
cleanup() {
    local rc=$?
    set +e
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    [ "$POLICY_RC_GUARD" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ -n "$W" ] && [ -d "$W" ]; then
        if [ "$rc" != 0 ]; then
            echo "run.sh: failed (exit $rc); logs and configs kept in $W" >&2
        elif [ "$KEEP" = 1 ]; then
            echo "run.sh: kept $W" >&2
        else
            rm -rf "$W"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg LOG CMD... : runs CMD in the background, remembers its pid in $BG_PID.
start_bg() {
    local logf=$1; shift
    "$@" >"$logf" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
}
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
wait_port() { # PORT PID LOG
    local i
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        if ! kill -0 "$2" 2>/dev/null; then echo "process $2 died; its log:" >&2; cat "$3" >&2; return 1; fi
        sleep 0.05
    done
    echo "port $1 did not open; log:" >&2; cat "$3" >&2; return 1
}

# ---- (a) tools and binaries -------------------------------------------------------------------
NGINX_BIN=$(command -v nginx || true)
[ -z "$NGINX_BIN" ] && [ -x /usr/sbin/nginx ] && NGINX_BIN=/usr/sbin/nginx
if [ -z "$NGINX_BIN" ]; then
    log "installing nginx (Debian package)"
    if [ "$(id -u)" = 0 ]; then
        # Keep the package from starting its own nginx on port 80.
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
            POLICY_RC_GUARD=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
        [ "$POLICY_RC_GUARD" = 1 ] && rm -f /usr/sbin/policy-rc.d && POLICY_RC_GUARD=0
        NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
    else
        echo "run.sh: nginx is not installed and this is not root; the nginx rows will be skipped" >&2
        NGINX_BIN=""
    fi
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# The source the binaries are built from, taken now: HEAD may move while the run goes on.
SRC_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
SRC_DIRTY=$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' (with uncommitted changes under src/)')
[ "$BUILD" = 1 ] || SRC_DIRTY+=" (binaries not rebuilt: --no-build)"
[ -n "${CRITERION_DIR:-}" ] && BENCH=0
CRITERION_DIR=${CRITERION_DIR:-$CARGO_TARGET_DIR/criterion}
if [ "$BUILD" = 1 ]; then
    log "building release binaries (seb, loadgen)"
    (cd "$ROOT" && cargo build --release --bin seb)
    # Not --locked: loadgen depends on seb by path, so a new seb dependency must be able to
    # enter loadgen's Cargo.lock.
    (cd "$HERE/loadgen" && cargo build --release)
fi
if [ "$BENCH" = 1 ]; then
    # Measured in this run, not taken from an earlier one: this machine's speed drifts by up to
    # 60% over hours, and the CPU ratio is only meaningful against a floor measured alike.
    log "measuring the crypto floor (cargo bench --bench hot_path -- floor/)"
    (cd "$ROOT" && cargo bench --bench hot_path -- floor/) >&2
fi
SEB=$CARGO_TARGET_DIR/release/seb
LG=$CARGO_TARGET_DIR/release/loadgen
for b in "$SEB" "$LG"; do [ -x "$b" ] || { echo "run.sh: $b missing (drop --no-build)" >&2; exit 1; }; done

# ---- (b) keys, TLS, revocation, configs --------------------------------------------------------
# On disk, not tmpfs: the fsync path must really sync.
W=$(mktemp -d "${LOADTEST_TMP:-/var/tmp}/seb-loadtest.XXXXXX")
RES=$W/results
mkdir -p "$RES" "$W/nginx"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# The load average decays over minutes (a build just before the run still shows in it), so
# whether other work is running is judged from the CPU actually busy over a few seconds.
cpu_busy_pct() { # SECONDS -> % of all cores' time not idle or waiting on I/O
    local a b
    a=$(awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6 }' /proc/stat)
    sleep "$1"
    b=$(awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[1] - x[1]; printf "%.0f", (t > 0 ? 100 * (t - (y[2] - x[2])) / t : 0) }'
}
BUSY_BEFORE=$(cpu_busy_pct 3)
# The storage's synced-write latency bounds the durable path's latency from below.
DSYNC=$(dd if=/dev/zero of="$W/dsync.test" bs=600 count=200 oflag=dsync 2>&1 | awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") printf "%.2f ms per 600-byte O_DSYNC write (200 writes in %s s)", $(i-1) * 1000 / 200, $(i-1) }')
rm -f "$W/dsync.test"
TOP_BEFORE=$(ps -eo pcpu=,comm= --sort=-pcpu | head -5 | awk '{printf "%s %s%%; ", $2, $1}')

log "keys, dev TLS certificates, revocation data"
"$SEB" keygen --out "$W/signer" >/dev/null 2>&1
"$SEB" keygen --out "$W/broker" >/dev/null 2>&1
"$SEB" dev-certs --out "$W/tls" >/dev/null 2>&1
issue_revocation() {
    "$SEB" revocation issue --key "$W/signer.key" --iss signer --epoch 1 --min-policy-epoch 1 \
        --out "$W/revocation.jws"
}
issue_revocation
# Revocation data goes stale after 5 minutes by default: re-issue it every minute, as a
# signer would, so long runs stay admitted.
( while sleep 60; do issue_revocation || true; done ) &
PIDS+=("$!")

mapfile -t P < <("$LG" ports 14)
UP_PORT=${P[0]} NGX_HTTP_PORT=${P[1]} NGX_TLS_PORT=${P[2]}
SEB_FSYNC_PORT=${P[3]} SEB_FSYNC_ADMIN=${P[4]} SEB_FLUSH_PORT=${P[5]} SEB_FLUSH_ADMIN=${P[6]}
SEB_SOAK_PORT=${P[7]} SEB_SOAK_ADMIN=${P[8]} SEB_AWS_PORT=${P[9]} SEB_AWS_ADMIN=${P[10]}
STS_PORT=${P[11]} SEB_STS_PORT=${P[12]} SEB_STS_ADMIN=${P[13]}
export SEB_LOADTEST_UPSTREAM_TOKEN=loadtest-upstream-secret
# Static AWS credentials for the aws target (identity = "static": "cached" identity, no STS
# call per request); the stub upstream does not check the signature made with them.
export SEB_LOADTEST_AWS_AKID=AKIALOADTESTSTATIC01
export SEB_LOADTEST_AWS_SECRET=loadtest-static-secret-not-a-real-key
# seb-aws-sts's base credentials, which sign its AssumeRole calls: the SDK's default chain
# reads them from these variables, given to that seb process only (no profile files, no
# instance metadata). The stub does not check the signature.
STS_BASE_ENV=(AWS_ACCESS_KEY_ID=AKIALOADTESTBASE0001 AWS_SECRET_ACCESS_KEY=loadtest-base-secret-not-a-real-key
    AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null)

seb_config() { # NAME DURABILITY PORT ADMIN_PORT
    mkdir -p "$W/$1"
    cat > "$W/$1.toml" <<EOF
broker_id = "$1"
[tls]
cert = "tls/server.pem"
key = "tls/server.key"
[admin]
listen = "127.0.0.1:$4"
[[issuers]]
name = "signer"
public_key = "signer.pub"
[revocation]
file = "revocation.jws"
[audit]
path = "$1/audit.jsonl"
durability = "$2"
signing_key = "broker.key"
# The soak keeps its rate x (5 min + 30 s) certificates live; the default limit, 2,000,000,
# is about 6,000/s of them, and a faster broker's soak would be refused past it.
[limits]
max_live_certificates = 10000000
[[targets]]
name = "$TARGET"
kind = "http"
listen = "127.0.0.1:$3"
[targets.http]
upstream = "http://127.0.0.1:$UP_PORT"
credential = { header = "Authorization", value_env = "SEB_LOADTEST_UPSTREAM_TOKEN", prefix = "Bearer " }
EOF
}
seb_config seb-fsync fsync "$SEB_FSYNC_PORT" "$SEB_FSYNC_ADMIN"
seb_config seb-flush flush "$SEB_FLUSH_PORT" "$SEB_FLUSH_ADMIN"
aws_config() { # NAME PORT ADMIN_PORT, then the identity lines on stdin
    mkdir -p "$W/$1"
    { cat <<EOF
broker_id = "$1"
[tls]
cert = "tls/server.pem"
key = "tls/server.key"
[admin]
listen = "127.0.0.1:$3"
[[issuers]]
name = "signer"
public_key = "signer.pub"
[revocation]
file = "revocation.jws"
[audit]
path = "$1/audit.jsonl"
durability = "fsync"
signing_key = "broker.key"
[[targets]]
name = "$AWS_TARGET"
kind = "aws"
listen = "127.0.0.1:$2"
[targets.aws]
# The fast stub instead of https://dynamodb.$AWS_REGION.amazonaws.com.
endpoint = "http://127.0.0.1:$UP_PORT"
services = ["dynamodb"]
regions = ["$AWS_REGION"]
EOF
    cat; } > "$W/$1.toml"
}
aws_config seb-aws "$SEB_AWS_PORT" "$SEB_AWS_ADMIN" <<EOF
identity = "static"
static_credentials = { access_key_id = { value_env = "SEB_LOADTEST_AWS_AKID" }, secret_access_key = { value_env = "SEB_LOADTEST_AWS_SECRET" } }
EOF
# The same target with a per-certificate STS session: every single-use certificate costs one
# AssumeRole, answered by the stub after STS_DELAY_MS. The phases without and with prepare
# run one after the other on the same ports, each on a fresh process with its own audit log.
for s in seb-aws-sts seb-aws-sts-prepared; do
    aws_config "$s" "$SEB_STS_PORT" "$SEB_STS_ADMIN" <<EOF
identity = "sts"
execution_role_arn = "arn:aws:iam::123456789012:role/seb-loadtest-exec"
sts_endpoint = "http://127.0.0.1:$STS_PORT"
EOF
done

NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root;"
cat > "$W/nginx.conf" <<EOF
# A plain reverse proxy: no auth, no body inspection, keep-alive both ways.
$NGINX_USER
worker_processes auto;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $W/nginx/body;
    proxy_temp_path $W/nginx/proxy;
    fastcgi_temp_path $W/nginx/fastcgi;
    uwsgi_temp_path $W/nginx/uwsgi;
    scgi_temp_path $W/nginx/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream fast {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGX_HTTP_PORT;
        location / {
            proxy_pass http://fast;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$NGX_TLS_PORT ssl;
        ssl_certificate $W/tls/server.pem;
        ssl_certificate_key $W/tls/server.key;
        location / {
            proxy_pass http://fast;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

log "issuing certificate pools (before any load: the generator never signs)"
pool() { # OUT COUNT [extra loadgen certs args]
    local out=$1 count=$2; shift 2
    "$LG" certs --key "$W/signer.key" --iss signer --sub agent:loadtest --count "$count" \
        --out "$out" --upstream "$TARGET" --path "$REQ_PATH" --method POST --body "$BODY" "$@"
}
# The closed-loop pools now; the fixed-rate ones once the rate is known (after seb-fsync's
# closed loop, before any fixed-rate phase).
for s in seb-fsync seb-flush; do
    pool "$W/$s-closed.certs" "$CLOSED_POOL"
done
aws_pool() { # OUT COUNT
    "$LG" certs --key "$W/signer.key" --iss signer --sub agent:loadtest --count "$2" --out "$1" \
        --target aws --aws-service dynamodb --aws-region "$AWS_REGION" --aws-operation PutItem \
        --aws-resource "$AWS_TABLE" --body "$AWS_BODY" --aud "$AWS_TARGET"
}
aws_pool "$W/seb-aws-closed.certs" "$CLOSED_POOL"

# ---- (c) processes -------------------------------------------------------------------------------
log "starting the fast upstream on 127.0.0.1:$UP_PORT"
start_bg "$W/upstream.log" "$LG" upstream --listen "127.0.0.1:$UP_PORT" --threads 1
UP_PID=$BG_PID
wait_port "$UP_PORT" "$UP_PID" "$W/upstream.log"
log "starting the STS stub on 127.0.0.1:$STS_PORT (AssumeRole answered after $STS_DELAY_MS ms)"
start_bg "$W/sts.log" "$LG" sts --listen "127.0.0.1:$STS_PORT" --delay-ms "$STS_DELAY_MS" --threads 1
wait_port "$STS_PORT" "$BG_PID" "$W/sts.log"

NGINX_PID=""
if [ -n "$NGINX_BIN" ]; then
    log "starting nginx (HTTP :$NGX_HTTP_PORT, HTTPS :$NGX_TLS_PORT)"
    start_bg "$W/nginx/stdout.log" "$NGINX_BIN" -p "$W/nginx" -e "$W/nginx/error.log" -c "$W/nginx.conf" -g 'daemon off;'
    NGINX_PID=$BG_PID
    wait_port "$NGX_TLS_PORT" "$NGINX_PID" "$W/nginx/error.log"
fi

# ---- (d, e) measurement ----------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # PIDS... -> utime+stime of all, in ticks
    local t=0 p v
    for p in "$@"; do
        v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$(( t + v ))
    done
    echo "$t"
}
rss_kb() { # PIDS... -> summed VmRSS
    local t=0 p v
    for p in "$@"; do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
        t=$(( t + ${v:-0} ))
    done
    echo "$t"
}
ticks_to_s() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", t / hz }'; }

# phase NAME open|closed URL CERTS(or -) PIDS(space-separated, or "") [LOADGEN RUN ARGS...] :
# runs one load phase and leaves RES/NAME-PHASE.json and, when PIDS are given,
# RES/NAME-PHASE.cpu (seconds). The body is $PHASE_BODY when set, else $BODY; the fixed-rate
# phase's connections $PHASE_CONNS when set, else $OPEN_CONNS.
phase() {
    local name=$1 ph=$2 url=$3 certs=$4 pids=$5 c0 c1
    shift 5
    local args=(--url "$url" --ca "$W/tls/ca.pem" --body "${PHASE_BODY:-$BODY}" --method POST --label "$name" --json "$@")
    [ "$certs" != - ] && args+=(--certs "$certs")
    if [ "$ph" = open ]; then
        args+=(--mode open --rate "${PHASE_RATE:-$RATE}" --connections "${PHASE_CONNS:-$OPEN_CONNS}" --duration "$OPEN_S" --warmup "$OPEN_WARM")
    else
        args+=(--mode closed --connections "$CLOSED_CONNS" --duration "$CLOSED_S" --warmup "$CLOSED_WARM")
    fi
    # shellcheck disable=SC2086
    c0=$(cpu_ticks $pids)
    if ! "$LG" run "${args[@]}" > "$RES/$name-$ph.json" 2> "$RES/$name-$ph.txt"; then
        cat "$RES/$name-$ph.txt" >&2
        echo "run.sh: load phase $name $ph failed" >&2
        return 1
    fi
    # shellcheck disable=SC2086
    c1=$(cpu_ticks $pids)
    cat "$RES/$name-$ph.txt" >&2
    [ -n "$pids" ] && ticks_to_s $(( c1 - c0 )) > "$RES/$name-$ph.cpu"
    return 0
}
http_get() { # PORT PATH OUT (bash's /dev/tcp: no curl needed)
    if exec 3<>"/dev/tcp/127.0.0.1/$1"; then
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
        sed '1,/^\r*$/d' <&3 > "$3" || true
        exec 3<&- 3>&-
    else
        echo "run.sh: could not read http://127.0.0.1:$1$2" >&2
        : > "$3"
    fi
}
# Counters over one phase, from Prometheus text read before and after it: each counter's
# (`_total`, `_sum`, `_count`, `_bucket`) value minus its value before; gauges as read after.
counter_delta() { # BEFORE AFTER OUT
    awk 'BEGIN { OFMT = "%.9g" }
         FILENAME == ARGV[1] { if ($1 !~ /^#/) before[$1] = $2; next }
         /^#/ { print; next }
         NF >= 2 && $1 ~ /_(total|sum|count)(\{|$)|_bucket\{/ { print $1, ($1 in before ? $2 - before[$1] : $2); next }
         NF >= 2 { print $1, $2 }' "$1" "$2" > "$3"
}
# phase_counted NAME PORT PATH [phase args after NAME]: a fixed-rate phase with the counters
# at http://127.0.0.1:PORT/PATH differenced around it into RES/NAME-open.SUFFIX (seb's
# /metrics -> .metrics, the STS stub's /stats -> .sts).
phase_counted() { # NAME SUFFIX PORT PATH URL CERTS PIDS [ARGS...]
    local name=$1 suffix=$2 port=$3 path=$4
    shift 4
    http_get "$port" "$path" "$RES/$name-open.$suffix.before"
    phase "$name" open "$@"
    http_get "$port" "$path" "$RES/$name-open.$suffix.after"
    counter_delta "$RES/$name-open.$suffix.before" "$RES/$name-open.$suffix.after" "$RES/$name-open.$suffix"
}
write_proc() { # NAME RSS_BEFORE RSS_AFTER (a phase that was not run: null)
    local o c
    o=$(cat "$RES/$1-open.cpu" 2>/dev/null || echo null)
    c=$(cat "$RES/$1-closed.cpu" 2>/dev/null || echo null)
    printf '{"cpu_open_s": %s, "cpu_closed_s": %s, "rss_before_kb": %s, "rss_after_kb": %s}\n' \
        "$o" "$c" "$2" "$3" > "$RES/$1-proc.json"
}
seb_start() { # NAME PORT [VAR=VALUE...]: starts seb with $W/NAME.toml; sets SEB_PID and SEB_RSS0
    local name=$1 port=$2
    shift 2
    SEB_LOG=${SEB_LOG:-info} start_bg "$W/$name.log" env "$@" "$SEB" serve --config "$W/$name.toml"
    SEB_PID=$BG_PID
    wait_port "$port" "$SEB_PID" "$W/$name.log"
    sleep 0.5
    SEB_RSS0=$(rss_kb "$SEB_PID")
}
seb_stop() { # NAME
    write_proc "$1" "$SEB_RSS0" "$(rss_kb "$SEB_PID")"
    stop_pid "$SEB_PID"
    wc -l < "$W/$1/audit.jsonl" > "$RES/$1-audit-lines"
}

# ---- seb-fsync's closed loop first: it sets the fixed rate of every fixed-rate phase -----------
log "path: seb-fsync (seb http target, TLS, audit fsync): closed loop first, it sets the fixed rate"
seb_start seb-fsync "$SEB_FSYNC_PORT"
phase seb-fsync closed "https://localhost:$SEB_FSYNC_PORT$REQ_PATH" "$W/seb-fsync-closed.certs" "$SEB_PID"
MAX_RPS=$(awk -F': ' '/"ok_rps"/ { gsub(/,/, "", $2); print int($2) }' "$RES/seb-fsync-closed.json")
if [ -n "$RATE_SET" ]; then RATE=$RATE_SET; else RATE=$(( MAX_RPS * RATE_SHARE_PCT / 100 )); fi
[ "$RATE" -ge 1 ] || { echo "run.sh: no usable fixed rate (seb-fsync closed loop: $MAX_RPS/s)" >&2; exit 1; }
# The seb-aws-sts paths at half the fixed rate: each of their requests also mints an STS
# session inside seb (the SDK's request, SigV4, the XML answer: about 0.5 ms of CPU, 3-5x a
# static-identity request), and the prepared path sends two requests per change. At the full
# fixed rate both saturated 2 cores (2,091 req/s on 2026-12-01: +143 ms and +4.7 s added
# p50), which measures the host, not the STS delay hidden or not.
if [ -n "$STS_RATE_SET" ]; then STS_RATE=$STS_RATE_SET; else STS_RATE=$(( RATE / 2 )); fi
[ "$STS_RATE" -ge 1 ] || STS_RATE=1
printf '{"rate": %s, "basis": "seb-fsync closed loop", "closed_max_rps": %s, "share_pct": %s, "set_by_option": %s, "sts_rate": %s, "sts_rate_set_by_option": %s}\n' \
    "$RATE" "$MAX_RPS" "$RATE_SHARE_PCT" "$([ -n "$RATE_SET" ] && echo true || echo false)" \
    "$STS_RATE" "$([ -n "$STS_RATE_SET" ] && echo true || echo false)" > "$RES/rate.json"
OPEN_POOL=$(( RATE * (OPEN_S + OPEN_WARM) + 100 ))
# Without prepare every seb-aws-sts request holds its connection for the STS delay: enough
# connections that STS_RATE x delay of them can be in flight twice over, so the generator's
# connections never set the pace.
STS_CONNS=$(( OPEN_CONNS + (STS_RATE * STS_DELAY_MS * 2 + 999) / 1000 ))
log "fixed rate: $RATE req/s ($([ -n "$RATE_SET" ] && echo "set with --rate" || echo "$RATE_SHARE_PCT% of seb-fsync's $MAX_RPS req/s closed-loop")); issuing the fixed-rate pools"
for s in seb-fsync seb-flush; do pool "$W/$s-open.certs" "$OPEN_POOL"; done
for s in seb-aws seb-aws-sts seb-aws-sts-prepared; do aws_pool "$W/$s-open.certs" "$OPEN_POOL"; done
phase_counted seb-fsync metrics "$SEB_FSYNC_ADMIN" /metrics "https://localhost:$SEB_FSYNC_PORT$REQ_PATH" "$W/seb-fsync-open.certs" "$SEB_PID"
seb_stop seb-fsync

# ---- the other paths, each closed loop then fixed rate -------------------------------------------
log "path: direct (fast upstream, plain HTTP)"
phase direct closed "http://127.0.0.1:$UP_PORT$REQ_PATH" - ""
phase direct open "http://127.0.0.1:$UP_PORT$REQ_PATH" - ""

NGINX_PATHS=()
if [ -n "$NGINX_PID" ]; then
    # shellcheck disable=SC2207
    NGX_PIDS=("$NGINX_PID" $(pgrep -P "$NGINX_PID" || true))
    for v in http tls; do
        if [ $v = http ]; then url="http://127.0.0.1:$NGX_HTTP_PORT$REQ_PATH"; else url="https://localhost:$NGX_TLS_PORT$REQ_PATH"; fi
        log "path: nginx-$v"
        r0=$(rss_kb "${NGX_PIDS[@]}")
        phase "nginx-$v" closed "$url" - "${NGX_PIDS[*]}"
        phase "nginx-$v" open "$url" - "${NGX_PIDS[*]}"
        write_proc "nginx-$v" "$r0" "$(rss_kb "${NGX_PIDS[@]}")"
        NGINX_PATHS+=("nginx-$v")
    done
fi

log "path: seb-flush (seb http target, TLS, audit flush)"
seb_start seb-flush "$SEB_FLUSH_PORT"
phase seb-flush closed "https://localhost:$SEB_FLUSH_PORT$REQ_PATH" "$W/seb-flush-closed.certs" "$SEB_PID"
phase_counted seb-flush metrics "$SEB_FLUSH_ADMIN" /metrics "https://localhost:$SEB_FLUSH_PORT$REQ_PATH" "$W/seb-flush-open.certs" "$SEB_PID"
seb_stop seb-flush

# The aws path and its own direct baseline: the same PutItem request straight to the stub.
log "path: direct-aws (the DynamoDB PutItem request straight to the fast upstream)"
PHASE_BODY=$AWS_BODY phase direct-aws closed "http://127.0.0.1:$UP_PORT/" - "" "${AWS_HEADERS[@]}"
PHASE_BODY=$AWS_BODY phase direct-aws open "http://127.0.0.1:$UP_PORT/" - "" "${AWS_HEADERS[@]}"
log "path: seb-aws (seb aws target, static identity, SigV4 re-signing, TLS, audit fsync)"
seb_start seb-aws "$SEB_AWS_PORT"
PHASE_BODY=$AWS_BODY phase seb-aws closed "https://localhost:$SEB_AWS_PORT/" "$W/seb-aws-closed.certs" "$SEB_PID" \
    "${AWS_HEADERS[@]}" --cert-header x-amz-security-token
PHASE_BODY=$AWS_BODY phase_counted seb-aws metrics "$SEB_AWS_ADMIN" /metrics "https://localhost:$SEB_AWS_PORT/" \
    "$W/seb-aws-open.certs" "$SEB_PID" "${AWS_HEADERS[@]}" --cert-header x-amz-security-token
seb_stop seb-aws

# The aws path with a per-certificate STS session, fixed rate only (a closed loop would measure
# the STS delay over the connection count), each phase on a fresh seb: without prepare, every
# request waits for its AssumeRole; with prepare, each certificate is presented
# PREPARE_LEAD_MS before its use. The STS stub's counters are differenced around each phase.
for s in seb-aws-sts seb-aws-sts-prepared; do
    extra=()
    if [ $s = seb-aws-sts ]; then
        log "path: seb-aws-sts (aws target, identity = \"sts\", AssumeRole after $STS_DELAY_MS ms, no prepare; $STS_RATE req/s, $STS_CONNS connections)"
    else
        log "path: seb-aws-sts-prepared (the same, each certificate prepared $PREPARE_LEAD_MS ms before its use)"
        # As many prepare connections as the other paths' request connections: on a loaded
        # host a few would queue the prepares until they arrive after their use.
        extra=(--prepare-lead-ms "$PREPARE_LEAD_MS" --prepare-connections "$OPEN_CONNS")
    fi
    seb_start "$s" "$SEB_STS_PORT" "${STS_BASE_ENV[@]}"
    http_get "$STS_PORT" /stats "$RES/$s-open.sts.before"
    PHASE_BODY=$AWS_BODY PHASE_CONNS=$STS_CONNS PHASE_RATE=$STS_RATE phase_counted "$s" metrics "$SEB_STS_ADMIN" /metrics "https://localhost:$SEB_STS_PORT/" \
        "$W/$s-open.certs" "$SEB_PID" "${AWS_HEADERS[@]}" --cert-header x-amz-security-token "${extra[@]}"
    http_get "$STS_PORT" /stats "$RES/$s-open.sts.after"
    counter_delta "$RES/$s-open.sts.before" "$RES/$s-open.sts.after" "$RES/$s-open.sts"
    seb_stop "$s"
done

PATHS=(direct "${NGINX_PATHS[@]}" seb-fsync seb-flush direct-aws seb-aws seb-aws-sts seb-aws-sts-prepared)

# ---- the etcd paths: seb-etcd (one replica, one-member etcd) and seb-etcd-3 (three replicas
# behind the generator, three-member etcd), each in its own etcd with its data on the same
# disk as the audit logs (etcd fsyncs its WAL on every commit, as in production) -------------
ETCD_BIN=$(command -v etcd || true)
if [ -z "$ETCD_BIN" ] && [ "$(id -u)" = 0 ]; then
    log "installing etcd (Debian etcd-server)"
    apt-get update -qq
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        POLICY_RC_GUARD=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
    [ "$POLICY_RC_GUARD" = 1 ] && rm -f /usr/sbin/policy-rc.d && POLICY_RC_GUARD=0
    ETCD_BIN=$(command -v etcd || true)
fi
# etcd_cluster NAME MEMBERS : starts the members; sets ETCD_EPS (TOML list items), ETCD_CLIENT
# (the first member's client port) and ETCD_PIDS.
etcd_cluster() {
    local name=$1 n=$2 i cluster="" cports=() pports=()
    mapfile -t ep < <("$LG" ports $(( 2 * n )))
    for i in $(seq 0 $(( n - 1 ))); do
        cports+=("${ep[$i]}") pports+=("${ep[$(( n + i ))]}")
        cluster+="${cluster:+,}$name-m$i=http://127.0.0.1:${ep[$(( n + i ))]}"
    done
    ETCD_EPS="" ETCD_PIDS=()
    for i in $(seq 0 $(( n - 1 ))); do
        start_bg "$W/$name-m$i.log" "$ETCD_BIN" --name "$name-m$i" --data-dir "$W/$name-m$i" \
            --listen-client-urls "http://127.0.0.1:${cports[$i]}" --advertise-client-urls "http://127.0.0.1:${cports[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${pports[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pports[$i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "$name" \
            --logger zap --log-level warn
        ETCD_PIDS+=("$BG_PID")
        ETCD_EPS+="${ETCD_EPS:+, }\"http://127.0.0.1:${cports[$i]}\""
    done
    ETCD_CLIENT=${cports[0]}
    for i in $(seq 0 $(( n - 1 ))); do wait_port "${cports[$i]}" "${ETCD_PIDS[$i]}" "$W/$name-m$i.log"; done
}
# etcd_metrics PORT OUT : etcd's own /metrics on its client port.
etcd_metrics() {
    if exec 3<>"/dev/tcp/127.0.0.1/$1"; then
        printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        sed '1,/^\r*$/d' <&3 > "$2" || true
        exec 3<&- 3>&-
    fi
}
# seb_etcd_config NAME PORT ADMIN ENDPOINTS
seb_etcd_config() {
    seb_config "$1" fsync "$2" "$3"
    # After [targets.http]: a [state] header starts a top-level table wherever it stands.
    printf '\n[state]\nbackend = "etcd"\n[state.etcd]\nendpoints = [%s]\nprefix = "/seb/loadtest/"\n' "$4" >> "$W/$1.toml"
}
ETCD_MD=""
if [ -n "$ETCD_BIN" ]; then
    mapfile -t EP < <("$LG" ports 8)
    pool "$W/seb-etcd-open.certs" "$OPEN_POOL"
    pool "$W/seb-etcd-closed.certs" "$CLOSED_POOL"
    pool "$W/seb-etcd-3-open.certs" "$OPEN_POOL"
    pool "$W/seb-etcd-3-closed.certs" "$CLOSED_POOL"

    log "path: seb-etcd (one replica, one-member etcd, audit fsync)"
    etcd_cluster etcd1 1
    ETCD1_PIDS=("${ETCD_PIDS[@]}") ETCD1_CLIENT=$ETCD_CLIENT
    seb_etcd_config seb-etcd "${EP[0]}" "${EP[1]}" "$ETCD_EPS"
    SEB_LOG=${SEB_LOG:-info} start_bg "$W/seb-etcd.log" "$SEB" serve --config "$W/seb-etcd.toml"
    pid=$BG_PID
    wait_port "${EP[0]}" "$pid" "$W/seb-etcd.log"
    sleep 1
    r0=$(rss_kb "$pid")
    phase seb-etcd closed "https://localhost:${EP[0]}$REQ_PATH" "$W/seb-etcd-closed.certs" "$pid"
    etcd_metrics "$ETCD1_CLIENT" "$RES/etcd1-before.metrics"
    phase_counted seb-etcd metrics "${EP[1]}" /metrics "https://localhost:${EP[0]}$REQ_PATH" "$W/seb-etcd-open.certs" "$pid"
    etcd_metrics "$ETCD1_CLIENT" "$RES/etcd1-after.metrics"
    write_proc seb-etcd "$r0" "$(rss_kb "$pid")"
    stop_pid "$pid"
    for p in "${ETCD1_PIDS[@]}"; do stop_pid "$p"; done
    PATHS+=(seb-etcd)

    log "path: seb-etcd-3 (three replicas behind the generator, three-member etcd, audit fsync)"
    etcd_cluster etcd3 3
    ETCD3_PIDS=("${ETCD_PIDS[@]}")
    R_PIDS=()
    for i in 0 1 2; do
        seb_etcd_config "seb-etcd-3-r$i" "${EP[$(( 2 + 2 * i ))]}" "${EP[$(( 3 + 2 * i ))]}" "$ETCD_EPS"
        SEB_LOG=${SEB_LOG:-info} start_bg "$W/seb-etcd-3-r$i.log" "$SEB" serve --config "$W/seb-etcd-3-r$i.toml"
        R_PIDS+=("$BG_PID")
        wait_port "${EP[$(( 2 + 2 * i ))]}" "$BG_PID" "$W/seb-etcd-3-r$i.log"
    done
    sleep 1
    r0=$(rss_kb "${R_PIDS[@]}")
    for ph in closed open; do
        phase seb-etcd-3 "$ph" "https://localhost:${EP[2]}$REQ_PATH" "$W/seb-etcd-3-$ph.certs" "${R_PIDS[*]}" \
            --also-port "${EP[4]}" --also-port "${EP[6]}"
    done
    write_proc seb-etcd-3 "$r0" "$(rss_kb "${R_PIDS[@]}")"
    PATHS+=(seb-etcd-3)

    log "revocation propagation: pushed to replica 0, timed until replicas 1 and 2 report it"
    PROP_N=1000
    [ "$QUICK" = 1 ] && PROP_N=200
    "$LG" propagation --key "$W/signer.key" --iss signer --push "${EP[3]}" --watch "${EP[5]}" --watch "${EP[7]}" \
        --count "$PROP_N" --first-epoch 2 --min-policy-epoch 1 --label seb-etcd-3 \
        > "$RES/propagation.json" 2> "$RES/propagation.txt" || { cat "$RES/propagation.txt" >&2; exit 1; }
    cat "$RES/propagation.txt" >&2
    for p in "${R_PIDS[@]}"; do stop_pid "$p"; done
    for p in "${ETCD3_PIDS[@]}"; do stop_pid "$p"; done
    # etcd's own commit cost over seb-etcd's fixed-rate phase: WAL fsync and backend commit.
    ETCD_COMMIT=$(awk '
        FNR == 1 { f++ }
        /^etcd_disk_wal_fsync_duration_seconds_(sum|count) / { split($1, a, "_"); k = a[length(a)]; w[f, k] = $2 }
        /^etcd_disk_backend_commit_duration_seconds_(sum|count) / { split($1, a, "_"); k = a[length(a)]; b[f, k] = $2 }
        END {
            wc = w[2, "count"] - w[1, "count"]; bc = b[2, "count"] - b[1, "count"];
            printf "WAL fsync: %d calls, mean %s ms; backend commit: %d, mean %s ms", wc,
                (wc > 0 ? sprintf("%.3f", (w[2, "sum"] - w[1, "sum"]) / wc * 1000) : "–"), bc,
                (bc > 0 ? sprintf("%.3f", (b[2, "sum"] - b[1, "sum"]) / bc * 1000) : "–")
        }' "$RES/etcd1-before.metrics" "$RES/etcd1-after.metrics")
    ETCD_MD="- seb-etcd: one seb on a one-member etcd; seb-etcd-3: three seb processes (each its own audit log and broker_id; one signing key file here) on a three-member etcd, the generator's connections spread round robin over them. Same workload and audit \`fsync\` as seb-fsync; every request also takes its use in one etcd transaction.
- etcd's own commit cost during seb-etcd's fixed-rate phase (its \`/metrics\`): $ETCD_COMMIT. An admitted request on the etcd path waits for one etcd commit (a WAL fsync) and then one audit fsync.
- revocation propagation (\`loadgen propagation\`): $(cat "$RES/propagation.txt")"
else
    ETCD_MD="- etcd paths not run: etcd is not installed and this is not root."
fi

# ---- (f) the table and RESULTS.md ----------------------------------------------------------------
write_results() {
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
TABLE=$("$LG" table --dir "$RES" --paths "$(IFS=,; echo "${PATHS[*]}")" --direct direct \
    --nginx "$([ -n "$NGINX_PID" ] && echo nginx-tls || echo none)" --criterion "$CRITERION_DIR" \
    --baseline seb-aws=direct-aws,seb-aws-sts=direct-aws,seb-aws-sts-prepared=direct-aws)
echo
echo "$TABLE"

NPROC=$(nproc)
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MEM=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
NGINX_VERSION=$([ -n "$NGINX_BIN" ] && "$NGINX_BIN" -v 2>&1 | sed 's/.*: //' || echo "not installed")
BUSY=""
if [ "$BUSY_BEFORE" -gt 10 ]; then
    BUSY="**Other work was running on this machine** when the run started ($BUSY_BEFORE% of the CPU busy over the 3 s before it; busiest processes by lifetime %CPU (ps): $TOP_BEFORE): absolute figures are pessimistic and noisier than on an idle machine."
fi
audit_lines() { cat "$RES/$1-audit-lines" 2>/dev/null || echo "?"; }

{
    echo "# seb load test results"
    echo
    if [ "$QUICK" = 1 ]; then echo "**Quick smoke run (\`--quick\`): durations too short to be a measurement.**"; echo; fi
    echo "Generated by \`loadtest/run.sh$([ "$QUICK" = 1 ] && echo ' --quick')$([ "$SOAK" -gt 0 ] && echo " --soak $SOAK")\` on $(date -u '+%Y-%m-%d %H:%M UTC') from commit \`$SRC_REV\`$SRC_DIRTY$(now=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); [ -n "$now" ] && [ "$now" != "$SRC_REV" ] && echo "; HEAD moved to \`$now\` during the run")."
    echo
    echo "## Machine"
    echo
    echo "- cores (nproc): $NPROC; CPU: $CPU_MODEL; memory: $MEM"
    echo "- kernel: $(uname -r); nginx: $NGINX_VERSION"
    echo "- storage under the audit log ($(df -PT "$W" | awk 'NR == 2 { print $2 }')): $DSYNC; the durable (\`fsync\`) path cannot answer faster than one such sync"
    echo "- CPU busy in the 3 s before the run: $BUSY_BEFORE%; load average (1/5/15 min) before: $LOAD_BEFORE (it still carries any build run just before); after: $LOAD_AFTER"
    echo "- generator, upstream, proxy all on this machine, over loopback; the generator uses 2 runtime threads, the upstream 1, seb its default (one connection shard per core, one control thread) plus its audit writer thread, nginx \`worker_processes auto\`."
    [ -n "$BUSY" ] && { echo; echo "$BUSY"; }
    echo
    echo "## Workload"
    echo
    echo "- every request on the direct, nginx and seb-fsync/seb-flush paths: \`POST $REQ_PATH\` with a fixed $(printf %s "$BODY" | wc -c)-byte JSON body; answer: 200 with an 11-byte JSON body."
    echo "- order: seb-fsync's closed loop first, which sets the fixed rate; then every path's closed loop followed by its fixed-rate phase, on the same process (seb's per-phase figures below are its counters differenced around the fixed-rate phase)."
    echo "- fixed rate: $RATE req/s ($([ -n "$RATE_SET" ] && echo "set with \`--rate\`" || echo "$RATE_SHARE_PCT% of seb-fsync's $MAX_RPS req/s closed-loop maximum in this run, so the load is the same share of what this host can carry whatever its speed")) for ${OPEN_S} s (after ${OPEN_WARM} s unmeasured warm-up), $OPEN_CONNS keep-alive connections ($STS_CONNS on the seb-aws-sts paths), latency measured from each request's scheduled time (no coordinated omission)."
    echo "- closed loop: $CLOSED_CONNS connections sending back to back for ${CLOSED_S} s (after ${CLOSED_WARM} s warm-up); \"closed-loop req/s\" counts 2xx answers only. Not run on the seb-aws-sts paths, where it would measure the STS delay over the connection count."
    echo "- seb-fsync, seb-flush: http target over TLS (rustls, ECDSA P-256 dev certificate), every request an admitted single-use mutation with its own pre-issued certificate (body pinned by sha256), audit \`fsync\` (group-committed fdatasync) or \`flush\`; audit lines written: seb-fsync $(audit_lines seb-fsync), seb-flush $(audit_lines seb-flush)."
    echo "- seb-aws: seb's aws target over TLS, \`identity = \"static\"\` (fixed credentials from environment variables: the identity is cached, no STS call per request), endpoint override to the same fast upstream, audit \`fsync\`. Every request is a DynamoDB PutItem as an SDK sends it (\`POST /\`, \`Content-Type: application/x-amz-json-1.0\`, \`X-Amz-Target: DynamoDB_20120810.PutItem\`, placeholder-key SigV4 \`Authorization\` whose signature the broker ignores, a fixed $(printf %s "$AWS_BODY" | wc -c)-byte JSON body) with its own pre-issued certificate in \`X-Amz-Security-Token\` (\`seb.request\` = dynamodb/$AWS_REGION/PutItem/$AWS_TABLE, body pinned by sha256); the broker parses the JSON-protocol call, checks it against the contract, and re-signs it with SigV4 before forwarding; audit lines written: $(audit_lines seb-aws). **The upstream is the fast stub, not DynamoDB**: the figure is the broker's overhead on the AWS path (JSON protocol parsing, contract check, SigV4 re-signing, audit) with cached identity, not a DynamoDB latency. Its \"added\" and \"ratio to direct\" columns compare with direct-aws, the same PutItem request straight to the stub; its \"ratio to nginx\" compares with nginx-tls on the http request."
    echo "- seb-aws-sts, seb-aws-sts-prepared: the same aws target and requests with \`identity = \"sts\"\`: every single-use certificate costs one STS \`AssumeRole\` (execution role, inline session policy for the one call), sent by the AWS Rust SDK inside seb with base credentials from \`AWS_ACCESS_KEY_ID\`/\`AWS_SECRET_ACCESS_KEY\` to \`loadgen sts\`, a stub that answers each call after $STS_DELAY_MS ms on its own timer (standing for the real service; not AWS). seb-aws-sts sends each request with nothing ahead of it, so the request waits for its AssumeRole; seb-aws-sts-prepared presents each certificate to \`POST /v1/prepare\` $PREPARE_LEAD_MS ms before its request is due (same headers, empty body, its own $OPEN_CONNS connections and schedule), so the broker can mint the session before the use. Each phase on a fresh seb; audit lines written: $(audit_lines seb-aws-sts), $(audit_lines seb-aws-sts-prepared). Both compare with direct-aws. Both run at $STS_RATE req/s ($([ -n "$STS_RATE_SET" ] && echo "set with \`--sts-rate\`" || echo "half the fixed rate")): each request also mints its session inside seb (about 0.5 ms of CPU: the SDK's request, SigV4, the XML answer) and the prepared path sends two requests per change, so at the full fixed rate these paths measure a saturated host rather than whether the STS delay is hidden."
    echo "- nginx-http: nginx as a plain HTTP reverse proxy (upstream block with keepalive); nginx-tls: the same behind TLS with the same dev certificate as seb. \"ratio to nginx\" compares with nginx-tls, the like-for-like proxy for seb's TLS listener."
    echo "- CPU µs/req: the proxy's utime+stime (from /proc/PID/stat, all nginx processes) over the phase, divided by the 2xx answers of that phase including its warm-up. For seb, \"CPU / crypto floor\" divides the closed-loop figure by the crypto floor below."
    echo
    echo "## Results"
    echo
    echo "$TABLE"
    echo
    echo "## Where seb's time went"
    echo
    echo "From each seb's own \`/metrics\`, its counters read before and after its fixed-rate phase and differenced ($RATE req/s, warm-up included): mean time per request in each pipeline phase (\`seb_phase_duration_seconds\`), and the audit log's \`fdatasync\` calls and their mean (\`seb_audit_syncs\`, \`seb_audit_sync_seconds\`). \"forward\" includes the upstream's own answer; \"total\" runs from the request head to the response head inside seb, so it leaves out TLS and the client's side of the connection. With \`fsync\`, an admitted request waits for one sync: the mean sync under load is the durable path's floor on this machine, next to the idle figure under Machine."
    echo
    echo "| path | parse µs | admit µs | audit µs | identity µs | forward µs | total µs | admitted | fdatasync calls | mean fdatasync ms |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for p in seb-fsync seb-flush seb-aws seb-aws-sts seb-aws-sts-prepared; do
        [ -s "$RES/$p-open.metrics" ] || { echo "| $p | (metrics not read) |||||||||"; continue; }
        awk -v path="$p" '
            /^seb_phase_duration_seconds_sum/ { split($1, a, "\""); sum[a[2]] = $2 }
            /^seb_phase_duration_seconds_count/ { split($1, a, "\""); cnt[a[2]] = $2 }
            /^seb_requests_total\{.*decision="allow"/ { allowed += $2 }
            /^seb_audit_syncs_total / { syncs = $2 }
            /^seb_audit_sync_seconds_total / { sync_s = $2 }
            function us(ph) { return cnt[ph] > 0 ? sprintf("%.1f", sum[ph] / cnt[ph] * 1e6) : "–" }
            END {
                printf "| %s | %s | %s | %s | %s | %s | %s | %d | %d | %s |\n", path, us("parse"), us("admit"), us("audit"),
                    us("identity"), us("forward"), us("total"), allowed, syncs, (syncs > 0 ? sprintf("%.3f", sync_s / syncs * 1000) : "–")
            }' "$RES/$p-open.metrics"
    done
    echo
    echo "## Replicas on etcd"
    echo
    echo "$ETCD_MD"
    echo
    if [ -n "$SOAK_MD" ]; then echo "## Memory soak"; echo; echo "$SOAK_MD"; echo; fi
    echo "## Against the targets"
    echo
    echo "Computed by \`loadgen targets\` from this run's figures above, each against a floor measured in the same run: nginx-tls's added p50, the mean \`fdatasync\` under load (Where seb's time went), the crypto floor (under the table), the static aws path (seb-aws) and the STS stub's delay as served."
    echo
    "$LG" targets --dir "$RES" --criterion "$CRITERION_DIR" --cores "$NPROC"
    echo
    echo "## Not measured"
    echo
    echo "- real STS and real DynamoDB: the seb-aws-sts paths' AssumeRole goes to the delaying stub, and every aws path's upstream is the fast stub."
    [ "$SOAK" -gt 0 ] || echo "- memory soak: not run this time (\`--soak 600\` runs it)."
    true
    echo
    echo "## Raw generator output"
    echo
    echo '```'
    for p in "${PATHS[@]}"; do for ph in closed open; do [ -f "$RES/$p-$ph.txt" ] && cat "$RES/$p-$ph.txt"; done; done
    echo '```'
} > "$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
echo
echo "wrote $RESULTS" >&2
}

SOAK_MD=""
[ "$SOAK" -gt 0 ] && SOAK_MD="(the soak was still running when this was written)"
write_results

# ---- soak: memory flatness at 50% of the measured maximum ----------------------------------------
if [ "$SOAK" -gt 0 ]; then
    max=$(awk -F': ' '/"ok_rps"/ { gsub(/,/, "", $2); print int($2) }' "$RES/seb-fsync-closed.json")
    soak_rate=$(( max / 2 ))
    [ "$soak_rate" -lt 1 ] && { echo "run.sh: no closed-loop maximum to soak at" >&2; exit 1; }
    count=$(( soak_rate * (SOAK + 5) + 100 ))
    log "soak: seb-fsync at $soak_rate req/s (50% of $max) for ${SOAK}s; issuing $count certificates"
    # Short-lived certificates (5 min) whose validity follows the schedule, so the use store
    # reaches a steady state instead of growing for an hour.
    pool "$W/soak.certs" "$count" --ttl 300 --schedule-rate "$soak_rate" --start-in 30
    seb_config seb-soak fsync "$SEB_SOAK_PORT" "$SEB_SOAK_ADMIN"
    start_bg "$W/seb-soak.log" "$SEB" serve --config "$W/seb-soak.toml"
    pid=$BG_PID
    wait_port "$SEB_SOAK_PORT" "$pid" "$W/seb-soak.log"
    ( t=0; while kill -0 "$pid" 2>/dev/null; do echo "$t $(rss_kb "$pid")"; sleep 10; t=$((t + 10)); done ) > "$RES/soak-rss.txt" &
    sampler=$!
    PIDS+=("$sampler")
    c0=$(cpu_ticks "$pid")
    "$LG" run --url "https://localhost:$SEB_SOAK_PORT$REQ_PATH" --ca "$W/tls/ca.pem" --certs "$W/soak.certs" \
        --body "$BODY" --method POST --mode open --rate "$soak_rate" --connections "$OPEN_CONNS" \
        --duration "$SOAK" --label seb-soak --json > "$RES/soak.json" 2> "$RES/soak.txt" || { cat "$RES/soak.txt" >&2; exit 1; }
    c1=$(cpu_ticks "$pid")
    cat "$RES/soak.txt" >&2
    stop_pid "$pid"
    kill "$sampler" 2>/dev/null || true
    SOAK_MD=$(awk -v rate="$soak_rate" -v max="$max" -v secs="$SOAK" -v cpu="$(ticks_to_s $(( c1 - c0 )))" '
        { t[NR] = $1; r[NR] = $2 }
        END {
            first = (NR > 1) ? 2 : 1;                       # the sample after 10 s
            mid = int((NR + first) / 2);
            printf "Soak: seb-fsync at %d req/s (50%% of its %d req/s closed-loop maximum) for %d s; certificates live 5 min and follow the schedule, so the use store (one entry per certificate until its expiry plus the clock-skew grace) fills for the first ~5-6 min and then turns over: the last-40%% figure is the steady state.\n\n", rate, max, secs;
            printf "- RSS at %d s: %.1f MiB; at %d s (mid-run): %.1f MiB; at %d s (end): %.1f MiB\n", t[first], r[first]/1024, t[mid], r[mid]/1024, t[NR], r[NR]/1024;
            late = first + int((NR - first) * 0.6);         # past the use store turnover (~5.5 min) in a 10-min soak
            printf "- growth over the whole run (from %d s): %+.1f%%; over the second half (from %d s): %+.1f%%; over the last 40%% (from %d s, after the use store turns over): %+.1f%%\n", t[first], (r[NR]-r[first])*100/r[first], t[mid], (r[NR]-r[mid])*100/r[mid], t[late], (r[NR]-r[late])*100/r[late];
            printf "- seb CPU during the soak: %s s\n", cpu;
            printf "- samples (s KiB): ";
            for (i = 1; i <= NR; i++) printf "%s %s; ", t[i], r[i];
            printf "\n";
        }' "$RES/soak-rss.txt")
    SOAK_MD+=$'\n'"- generator: $(head -1 "$RES/soak.txt")"
    SOAK_MD+=$'\n'"- $(sed -n 2p "$RES/soak.txt" | sed 's/^ *//')"
    write_results
fi
