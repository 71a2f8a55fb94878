#!/usr/bin/env bash
# The seb demo: builds seb, makes dev keys and TLS certificates, starts a real local upstream
# (a recording HTTP API) and the broker with deploy/local/seb.toml, then plays an agent that
# gets one mutation admitted and is refused for every way a certificate can be wrong. Ends by
# printing the audit trail and verifying its chain and signatures. Exits non-zero if anything
# did not happen as shown.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/.demo
command -v python3 >/dev/null || { echo "demo: python3 is needed for the local upstream" >&2; exit 1; }
command -v curl >/dev/null || { echo "demo: curl is needed as the agent" >&2; exit 1; }

if ! command -v protoc >/dev/null; then
  # The etcd client crate compiles etcd's protobufs when seb is built.
  echo "demo: installing protoc (protobuf-compiler) from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
fi

echo "== building seb"
cargo build --locked --quiet
SEB=$ROOT/target/debug/seb

rm -rf "$DEMO" && mkdir -p "$DEMO/audit"
cp deploy/local/seb.toml deploy/local/signer.toml "$DEMO/"
cp -r policies "$DEMO/policies"
cd "$DEMO"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

echo "== keys and certificates"
echo "signer key id: $($SEB keygen --out signer 2>/dev/null)"
echo "broker key id: $($SEB keygen --out broker 2>/dev/null)"
$SEB keygen --out signer-log >/dev/null 2>&1   # the signer's own audit log key
AGENT_X5T=$($SEB dev-certs --out tls --agent agent:oncall 2>/dev/null)
$SEB revocation issue --key signer.key --iss signer-local --epoch 1 --out revocation.jws

echo "== starting the upstream (payments API on 127.0.0.1:19080) and the broker"
python3 "$ROOT/tests/upstream/recording_upstream.py" --log upstream.jsonl --port 19080 >/dev/null &
PIDS+=($!)
export PAYMENTS_API_TOKEN="payments-secret-held-by-the-broker" SEB_AGENT_TOKEN="demo-agent-read-token"
SEB_LOG=warn $SEB serve --config seb.toml 2>broker.log &
PIDS+=($!)
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:19901/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf http://127.0.0.1:19901/readyz >/dev/null || { echo "broker did not become ready:"; cat broker.log; exit 1; }

URL=https://localhost:18443
AGENT=(--silent --cacert tls/ca.pem)
# --aud names the target (optional for http, whose certificates name it in request.upstream).
issue() { $SEB cert issue --key signer.key --iss signer-local --sub agent:oncall --aud payments --claims "$ROOT/certs/refund-claims.json" "$@"; }
BODY='{"amount": 42, "currency": "EUR", "order": "ord_981"}'
FAILED=0

# expect NAME STATUS CODE curl-args...: runs the request and checks the refusal code.
expect() {
  local name=$1 want_status=$2 want_code=$3; shift 3
  local out status code
  out=$(curl "${AGENT[@]}" -w '\n%{http_code}' "$@")
  status=${out##*$'\n'}
  code=$(printf '%s' "${out%$'\n'*}" | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("code") or "-")
except Exception: print("-")')
  if [[ $status == "$want_status" && $code == "$want_code" ]]; then
    printf '  %-44s -> %s %s\n' "$name" "$status" "$code"
  else
    printf '  %-44s -> %s %s   (EXPECTED %s %s)\n' "$name" "$status" "$code" "$want_status" "$want_code"
    FAILED=1
  fi
}

echo "== starting the signer (policies/ on https://localhost:19443)"
SEB_LOG=warn $SEB signer serve --config signer.toml 2>signer.log &
PIDS+=($!)
for _ in $(seq 100); do
  curl -sf --cacert tls/ca.pem https://localhost:19443/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf --cacert tls/ca.pem https://localhost:19443/healthz >/dev/null || { echo "signer did not start:"; cat signer.log; exit 1; }
ASK=(--signer https://localhost:19443 --ca tls/ca.pem --client-cert tls/agent.pem --client-key tls/agent.key)
MTLS=(--cert tls/agent.pem --key tls/agent.key)

echo "== the agent asks the signer (seb request), the broker acts"
SIGNED=$($SEB request "${ASK[@]}" --proposal "$ROOT/certs/refund.json")
$SEB cert inspect "$SIGNED" 2>/dev/null | python3 -c 'import json,sys; p=json.load(sys.stdin)["payload"]
print("  the signer issued %s... to %s under policy %s, valid %ss, bound to the agent certificate: %s" % (p["jti"][:12], p["sub"], p["seb"]["policy"], p["exp"] - p["nbf"], "cnf" in p))'
expect "refund under the signer's certificate"      200 -                -X POST "$URL/v1/refunds" "${MTLS[@]}" -H 'content-type: application/json' -H "authorization: Bearer $SIGNED" -d "$BODY"
if REFUSAL=$($SEB request "${ASK[@]}" --proposal "$ROOT/certs/refund-too-large.json" 2>&1); then
  echo "  a refund of up to 5000: the signer issued it   (EXPECTED a refusal)"; FAILED=1
else
  printf '  %-44s -> refused by the signer:\n      %s\n' "a refund of up to 5000" "${REFUSAL#seb: }"
fi
SIGNED2=$($SEB request "${ASK[@]}" --proposal "$ROOT/certs/refund.json")
expect "4200 under the signer's 100 limit"           403 contract_mismatch -X POST "$URL/v1/refunds" "${MTLS[@]}" -H 'content-type: application/json' -H "authorization: Bearer $SIGNED2" -d '{"amount": 4200, "currency": "EUR", "order": "ord_982"}'

echo "== the agent at work"
CERT=$(issue --ttl 5m)
expect "refund without a certificate"              401 cert_missing     -X POST "$URL/v1/refunds" -H 'content-type: application/json' -d "$BODY"
expect "refund with its certificate (admitted)"     200 -                -X POST "$URL/v1/refunds" -H 'content-type: application/json' -H "authorization: Bearer $CERT" -d "$BODY"
expect "the same certificate again (replay)"        403 replayed         -X POST "$URL/v1/refunds" -H 'content-type: application/json' -H "authorization: Bearer $CERT" -d "$BODY"
EXPIRED=$(issue --ttl 2m --backdate 10m)
expect "an expired certificate"                     403 expired          -X POST "$URL/v1/refunds" -H 'content-type: application/json' -H "authorization: Bearer $EXPIRED" -d "$BODY"
FRESH=$(issue --ttl 5m)
TAMPERED=$(python3 - "$FRESH" <<'PY'
import base64, json, sys
h, p, s = sys.argv[1].split(".")
claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
claims["seb"]["body"]["constraints"]["/amount"] = {"max": 1000000}   # raise the limit
p = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
print(f"{h}.{p}.{s}")
PY
)
expect "a certificate edited to allow more"         403 bad_signature    -X POST "$URL/v1/refunds" -H 'content-type: application/json' -H "authorization: Bearer $TAMPERED" -d '{"amount": 5000, "currency": "EUR", "order": "ord_981"}'
expect "a refund over the certified limit"          403 contract_mismatch -X POST "$URL/v1/refunds" -H 'content-type: application/json' -H "authorization: Bearer $FRESH" -d '{"amount": 4200, "currency": "EUR", "order": "ord_981"}'
expect "a refund with an extra field"               403 contract_mismatch -X POST "$URL/v1/refunds" -H 'content-type: application/json' -H "authorization: Bearer $FRESH" -d '{"amount": 42, "currency": "EUR", "order": "ord_981", "iban": "XX00"}'
expect "the certificate on another path"            403 contract_mismatch -X POST "$URL/v1/payouts" -H 'content-type: application/json' -H "authorization: Bearer $FRESH" -d "$BODY"
REVOKED=$($SEB request "${ASK[@]}" --proposal "$ROOT/certs/refund.json")
REVOKED_JTI=$($SEB cert inspect "$REVOKED" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["payload"]["jti"])')
# The signer signs a new revocation document and pushes it to the broker before answering.
$SEB signer revoke --admin 127.0.0.1:19911 --jti "$REVOKED_JTI" --reason "demo" >/dev/null
expect "a certificate revoked a moment ago"         403 revoked          -X POST "$URL/v1/refunds" "${MTLS[@]}" -H 'content-type: application/json' -H "authorization: Bearer $REVOKED" -d "$BODY"
expect "a read over mTLS, no certificate needed"    200 -                "$URL/v1/refunds/ref_1" --cert tls/agent.pem --key tls/agent.key
expect "a read from an unknown caller"              401 unauthenticated  "$URL/v1/refunds/ref_1"

echo "== what the payments API received"
python3 - <<'PY'
import json
for line in open("upstream.jsonl"):
    r = json.loads(line)
    print(f"  {r['method']:5} {r['path']:22} authorization={r['headers'].get('authorization')!r} body={r['body']!r}")
PY
RECEIVED=$(wc -l < upstream.jsonl)
[[ $RECEIVED -eq 3 ]] || { echo "  EXPECTED exactly 3 requests (two admitted mutations, one read), got $RECEIVED"; FAILED=1; }

echo "== the audit trail (seb audit query)"
sleep 0.3   # outcome records are written just after the response
$SEB audit query audit/audit.jsonl --format table
echo "== every production refund under policy refunds-under-100, as JSON lines"
$SEB audit query audit/audit.jsonl --policy refunds-under-100 --decision allow --kind decision | cut -c1-160
echo "== seb audit verify"
$SEB audit verify --key broker.pub audit/audit.jsonl || FAILED=1
echo "== the signer's own log: every issuance and refusal, signed and chained"
$SEB audit query signer-audit/audit.jsonl --format table
$SEB audit verify --key signer-log.pub signer-audit/audit.jsonl || FAILED=1

if [[ $FAILED -ne 0 ]]; then
  echo "demo: something did not behave as shown above" >&2
  exit 1
fi
echo "== demo complete: the signer issued and refused, the broker admitted and refused, both audit chains verified"
