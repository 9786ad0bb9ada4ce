#!/usr/bin/env python3
"""The ECS API over HTTP: apid against moto's server (PyPI `moto[server]`, the other ECS-API
server that runs here), the same boto3 workflow against each, per-call latency p50/p99, and
each server's RSS at the end. boto3 rather than the aws CLI: the CLI's own start-up (a Python
interpreter per call) would dominate both sides' figures alike.

    python3 -m venv /var/cache/skiff-moto-venv
    /var/cache/skiff-moto-venv/bin/pip install 'moto[server]' boto3
    /var/cache/skiff-moto-venv/bin/python apid/benches/api_vs_moto.py \\
        --apid /var/cache/skiff-target/release/skiff-apid [--rounds 200]

The workflow (each call timed; `--rounds` rounds): CreateCluster, RegisterTaskDefinition,
DescribeTaskDefinition, ListTaskDefinitions, DescribeClusters, CreateService, DescribeServices,
UpdateService (desired count), ListServices, DeleteService (force). apid runs on SQLite with its
production settings (WAL, synchronous=FULL) and SigV4 verification; moto keeps state in memory
and does not check signatures.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import boto3


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, what):
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit("%s exited at start" % what)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("%s did not start" % what)


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def workflow(client, rounds):
    times = {}

    def call(name, fn, **kw):
        t = time.perf_counter()
        r = fn(**kw)
        times.setdefault(name, []).append(time.perf_counter() - t)
        return r

    td = {"family": "web", "networkMode": "bridge", "containerDefinitions": [
        {"name": "web", "image": "busybox", "memory": 64, "essential": True,
         "portMappings": [{"containerPort": 80, "hostPort": 0}]}]}
    for i in range(rounds):
        cluster = "c%d" % i
        call("CreateCluster", client.create_cluster, clusterName=cluster)
        r = call("RegisterTaskDefinition", client.register_task_definition, **td)
        arn = r["taskDefinition"]["taskDefinitionArn"]
        call("DescribeTaskDefinition", client.describe_task_definition, taskDefinition=arn)
        call("ListTaskDefinitions", client.list_task_definitions, familyPrefix="web", maxResults=10)
        call("DescribeClusters", client.describe_clusters, clusters=[cluster])
        call("CreateService", client.create_service, cluster=cluster, serviceName="s",
             taskDefinition=arn, desiredCount=0)
        call("DescribeServices", client.describe_services, cluster=cluster, services=["s"])
        call("UpdateService", client.update_service, cluster=cluster, service="s", desiredCount=0)
        call("ListServices", client.list_services, cluster=cluster)
        call("DeleteService", client.delete_service, cluster=cluster, service="s", force=True)
    return times


def pct(xs, p):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * p)] * 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--apid", required=True, help="the apid binary")
    p.add_argument("--rounds", type=int, default=200)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="apid-vs-moto-")
    port, node_port, moto_port = free_port(), free_port(), free_port()
    cfg = os.path.join(tmp, "apid.toml")
    with open(cfg, "w") as f:
        f.write('listen = "127.0.0.1:%d"\nnode_listen = "127.0.0.1:%d"\ndatabase = "%s/apid.db"\n'
                % (port, node_port, tmp))
    key = json.loads(subprocess.run([args.apid, "--config", cfg, "keys", "create"], check=True,
                                    capture_output=True, text=True).stdout)["AccessKey"]
    apid = subprocess.Popen([args.apid, "--config", cfg, "serve"], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "apid.log"), "w"))
    moto = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"),
                             "-p", str(moto_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, apid, "apid")
        wait_port(moto_port, moto, "moto_server")
        servers = {
            "apid": (apid, boto3.client("ecs", endpoint_url="http://127.0.0.1:%d" % port,
                                        region_name="us-east-1",
                                        aws_access_key_id=key["AccessKeyId"],
                                        aws_secret_access_key=key["SecretAccessKey"])),
            "moto": (moto, boto3.client("ecs", endpoint_url="http://127.0.0.1:%d" % moto_port,
                                        region_name="us-east-1", aws_access_key_id="testing",
                                        aws_secret_access_key="testing")),
        }
        results = {}
        for name, (proc, client) in servers.items():
            workflow(client, 5)  # warm-up: connections, first-use paths
            results[name] = (workflow(client, args.rounds), rss_mib(proc.pid))
        actions = list(results["apid"][0].keys())
        print("| action | apid p50 / p99 (ms) | moto p50 / p99 (ms) |")
        print("|---|---|---|")
        for a in actions:
            row = ["%.2f / %.2f" % (pct(results[s][0][a], 0.5), pct(results[s][0][a], 0.99))
                   for s in ("apid", "moto")]
            print("| %s | %s |" % (a, " | ".join(row)))
        every = {s: [x for xs in results[s][0].values() for x in xs] for s in results}
        print("| all calls | %s |" % " | ".join(
            "%.2f / %.2f" % (pct(every[s], 0.5), pct(every[s], 0.99)) for s in ("apid", "moto")))
        print("| server RSS at the end (MiB) | %.0f | %.0f |"
              % (results["apid"][1], results["moto"][1]))
    finally:
        for proc in (apid, moto):
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
