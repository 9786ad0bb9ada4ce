#!/usr/bin/python3
"""Simulated nodes for apid's end-to-end tests: each registers with an activation over the node
channel (a key and CSR made with openssl, TLS trusting apid's CA), then syncs over mTLS as
skiffd does, "running" what it is told: a desired-RUNNING task is reported PENDING, then
RUNNING; a desired-STOPPED one STOPPED (exit code 0). Events are kept until apid acknowledges
them and resent otherwise, as the protocol requires.

Control, for tests, through files in each node's directory (STATE/nodeK/):
  offline     while it exists the node does not sync (a cut link)
  running     written by the node: the ids of the tasks it runs now, one per line
  events.log  written by the node: every event it sent, one JSON per line
and in STATE/: `fail` lists task definition ARN suffixes (e.g. `web:3`) whose tasks fail to
start (STOPPED, stopCode TaskFailedToStart).

With several --endpoint values (apid replicas), a node moves to the next one when a sync fails.

  simnode.py --endpoint https://127.0.0.1:8461 --ca ca.pem --activation-id ID \
      --activation-code CODE --nodes 3 --state /tmp/nodes [--arch x86_64]

Prints one JSON line per node once registered: {"node": K, "containerInstanceId": ...}.
Standard library only (Debian's python3), so CI needs nothing from PyPI for it.
"""

import argparse
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time


def openssl_key_and_csr(d, cn):
    key, csr = os.path.join(d, "node.key"), os.path.join(d, "node.csr")
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + cn],
        check=True, capture_output=True)
    with open(csr) as f:
        return f.read()


class Node:
    def __init__(self, args, k):
        self.args, self.k = args, k
        self.dir = os.path.join(args.state, "node%d" % k)
        os.makedirs(self.dir, exist_ok=True)
        self.endpoint = 0
        self.version = 0
        self.seq = 0
        self.outbox = []
        self.reported = {}
        self.conn = None

    def host_port(self):
        url = self.args.endpoint[self.endpoint % len(self.args.endpoint)]
        host, port = url.split("://", 1)[1].split(":")
        return host, int(port)

    def context(self, with_cert):
        ctx = ssl.create_default_context(cafile=self.args.ca)
        if with_cert:
            ctx.load_cert_chain(os.path.join(self.dir, "node.crt"), os.path.join(self.dir, "node.key"))
        return ctx

    def post(self, path, body, with_cert=True, timeout=30):
        if self.conn is None:
            host, port = self.host_port()
            self.conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                                    context=self.context(with_cert))
        try:
            self.conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
            r = self.conn.getresponse()
            data = r.read()
        except Exception:
            self.conn.close()
            self.conn = None
            raise
        return r.status, json.loads(data or b"null")

    def register(self):
        ident = os.path.join(self.dir, "identity.json")
        if os.path.exists(ident):
            with open(ident) as f:
                return json.load(f)
        csr = openssl_key_and_csr(self.dir, "node%d" % self.k)
        body = {
            "activationId": self.args.activation_id,
            "activationCode": self.args.activation_code,
            "csr": csr, "cpu": self.args.cpu, "memory": self.args.memory,
            "attributes": [{"name": "ecs.cpu-architecture", "value": self.args.arch},
                           {"name": "ecs.os-type", "value": "linux"},
                           {"name": "sim.node", "value": str(self.k)}],
            "agentVersion": "simnode", "hostname": "sim-%d" % self.k,
        }
        status, reg = self.post("/register", body, with_cert=False)
        self.conn = None
        if status != 200:
            raise SystemExit("node %d: registration refused (%d): %s" % (self.k, status, reg))
        with open(os.path.join(self.dir, "node.crt"), "w") as f:
            f.write(reg["certificatePem"])
        with open(ident, "w") as f:
            json.dump(reg, f)
        return reg

    def fails(self, task):
        try:
            with open(os.path.join(self.args.state, "fail")) as f:
                bad = [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            return False
        return any(task["taskDefinitionArn"].endswith("/" + b) for b in bad)

    def event(self, task, status, **extra):
        self.seq += 1
        ev = {"seq": self.seq, "taskId": task["taskId"], "lastStatus": status, "at": time.time(),
              "containers": [{"name": c["name"], "lastStatus": status,
                              **({"exitCode": 0} if status == "STOPPED" else {})}
                             for c in (task["taskDefinition"] or {}).get("containerDefinitions", [])]}
        ev.update(extra)
        self.outbox.append(ev)
        with open(os.path.join(self.dir, "events.log"), "a") as f:
            f.write(json.dumps(ev) + "\n")
        self.reported[task["taskId"]] = status

    def converge(self, tasks):
        for t in tasks:
            last = self.reported.get(t["taskId"])
            if t["desiredStatus"] == "STOPPED":
                if last != "STOPPED":
                    self.event(t, "STOPPED", stoppedReason=t.get("stoppedReason") or "stopped")
            elif last is None:
                if self.fails(t):
                    self.event(t, "STOPPED", stopCode="TaskFailedToStart",
                               stoppedReason="CannotPullContainerError: simulated")
                else:
                    self.event(t, "PENDING")
            elif last == "PENDING":
                self.event(t, "RUNNING")
        running = sorted(k for k, v in self.reported.items() if v in ("PENDING", "RUNNING"))
        tmp = os.path.join(self.dir, "running.tmp")
        with open(tmp, "w") as f:
            f.write("".join(r + "\n" for r in running))
        os.replace(tmp, os.path.join(self.dir, "running"))

    def run(self):
        while True:
            if os.path.exists(os.path.join(self.dir, "offline")):
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                time.sleep(0.2)
                continue
            pending = [t for t in self.reported.values() if t == "PENDING"]
            wait = 0 if (self.outbox or pending) else self.args.wait
            try:
                status, r = self.post("/v1/sync", {"version": self.version, "events": self.outbox,
                                                   "waitSeconds": wait})
            except Exception as e:  # connection refused or reset: next replica, retry
                print("node %d: sync failed: %s" % (self.k, e), file=sys.stderr, flush=True)
                self.endpoint += 1
                time.sleep(0.5)
                continue
            if status == 403:
                print("node %d: deregistered: %s" % (self.k, r), file=sys.stderr, flush=True)
                open(os.path.join(self.dir, "deregistered"), "w").close()
                return
            if status != 200:
                print("node %d: sync answered %d: %s" % (self.k, status, r), file=sys.stderr, flush=True)
                time.sleep(0.5)
                continue
            self.outbox = [e for e in self.outbox if e["seq"] > r["ackedSeq"]]
            self.version = r["version"]
            self.converge(r["tasks"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", action="append", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--activation-id", required=True)
    p.add_argument("--activation-code", required=True)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--state", required=True)
    p.add_argument("--arch", default="x86_64")
    p.add_argument("--cpu", type=int, default=2048)
    p.add_argument("--memory", type=int, default=4096)
    p.add_argument("--wait", type=int, default=5)
    args = p.parse_args()
    nodes = [Node(args, k) for k in range(args.nodes)]
    for n in nodes:
        reg = n.register()
        print(json.dumps({"node": n.k, "containerInstanceId": reg["containerInstanceId"]}), flush=True)
    threads = [threading.Thread(target=n.run, daemon=True) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
