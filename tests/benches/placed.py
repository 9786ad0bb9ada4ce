#!/usr/bin/python3
"""The client side of tests/benches/placed.rs: boto3 (Debian's) against apid.

latency: ROUNDS times, RunTask of one task, then DescribeTasks every 2 ms until it is RUNNING on
the node (timed: the call to RUNNING as apid reports it), then StopTask and wait for STOPPED
(untimed). burst: BURST tasks started by RunTask calls of count 10 as fast as they return, timed
until every one is RUNNING: tasks/s sustained from an idle node. Prints one JSON object.
"""
import json
import sys
import time

import boto3


def main():
    endpoint, key, secret, td, rounds, burst = sys.argv[1:7]
    c = boto3.client("ecs", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id=key, aws_secret_access_key=secret)

    def wait(arns, status, poll):
        pending = set(arns)
        while pending:
            for chunk in [list(pending)[i:i + 100] for i in range(0, len(pending), 100)]:
                for t in c.describe_tasks(cluster="edge", tasks=chunk)["tasks"]:
                    if t["lastStatus"] == status:
                        pending.discard(t["taskArn"])
                    elif t["lastStatus"] == "STOPPED" and status != "STOPPED":
                        raise SystemExit("task stopped: %s" % json.dumps(t, default=str))
            if pending:
                time.sleep(poll)

    lat, calls = [], []
    for i in range(int(rounds) + 3):
        t0 = time.perf_counter()
        arn = c.run_task(cluster="edge", taskDefinition=td)["tasks"][0]["taskArn"]
        t1 = time.perf_counter()
        wait([arn], "RUNNING", 0.002)
        t2 = time.perf_counter()
        if i >= 3:
            lat.append((t2 - t0) * 1000)
            calls.append((t1 - t0) * 1000)
        c.stop_task(cluster="edge", task=arn)
        wait([arn], "STOPPED", 0.01)
    n = int(burst)
    t0 = time.perf_counter()
    arns = []
    while len(arns) < n:
        r = c.run_task(cluster="edge", taskDefinition=td, count=min(10, n - len(arns)))
        if r["failures"]:
            raise SystemExit("placement failed: %s" % r["failures"])
        arns += [t["taskArn"] for t in r["tasks"]]
    wait(arns, "RUNNING", 0.01)
    burst_s = time.perf_counter() - t0
    for a in arns:
        c.stop_task(cluster="edge", task=a)
    wait(arns, "STOPPED", 0.05)
    print(json.dumps({"latency_ms": lat, "runtask_ms": calls, "burst": n, "burst_s": burst_s}))


if __name__ == "__main__":
    main()
