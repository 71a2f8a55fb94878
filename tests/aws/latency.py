#!/usr/bin/env python3
"""Side-by-side latency of the same AWS call made directly to moto and through seb.

Run by `cargo test --test aws_e2e -- --ignored latency --nocapture`, which starts moto and the
broker. Calls alternate between the two paths so both see the same machine load. The broker's
path includes certificate verification, contract matching, a durable (fsync) audit decision, the
cached STS session, SigV4 re-signing and the outcome record.
"""
import argparse
import json
import os
import statistics
import time

import boto3
from botocore.config import Config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--direct", required=True)
    ap.add_argument("--admin", nargs=2, required=True)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--certificate", required=True)
    ap.add_argument("-n", type=int, default=200)
    a = ap.parse_args()
    cfg = Config(retries={"max_attempts": 1})
    direct = boto3.client("dynamodb", endpoint_url=a.direct, region_name="us-east-1",
                          aws_access_key_id=a.admin[0], aws_secret_access_key=a.admin[1], config=cfg)
    broker = boto3.client("dynamodb", endpoint_url=a.broker, region_name="us-east-1",
                          aws_access_key_id="SEBAGENTPLACEHOLDER", aws_secret_access_key="placeholder",
                          aws_session_token=a.certificate, verify=os.environ["AWS_CA_BUNDLE"], config=cfg)
    times = {"direct": [], "broker": []}
    for i in range(a.n + 10):
        for name, c in (("direct", direct), ("broker", broker)):
            item = {"id": {"S": f"o-{name}-{i}"}}
            t = time.perf_counter()
            c.put_item(TableName="orders", Item=item)
            if i >= 10:  # warm-up: connection pools, the STS session, moto's first calls
                times[name].append((time.perf_counter() - t) * 1000)
    out = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = {"n": len(ts), "p50_ms": round(statistics.median(ts), 2),
                     "p99_ms": round(ts[int(len(ts) * 0.99) - 1], 2), "mean_ms": round(statistics.fmean(ts), 2)}
    out["added_p50_ms"] = round(out["broker"]["p50_ms"] - out["direct"]["p50_ms"], 2)
    out["added_p99_ms"] = round(out["broker"]["p99_ms"] - out["direct"]["p99_ms"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
