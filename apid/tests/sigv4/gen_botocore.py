#!/usr/bin/env python3
"""Signs ECS-like requests with botocore's own SigV4Auth at a fixed time and prints them as JSON.

The output is checked in as botocore.json next to this script; apid's sigv4 unit tests verify
every request in it, so the tests need no Python. Regenerate with:

    python3 apid/tests/sigv4/gen_botocore.py > apid/tests/sigv4/botocore.json
"""

import datetime
import json
import sys
from urllib.parse import urlsplit

import botocore
import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY_ID = "AKIASKIFFEXAMPLE0001"
SECRET = "skiff/Secret+Key=EXAMPLE0123456789abcdefgh"
REGION = "eu-west-3"
SERVICE = "ecs"
NOW = datetime.datetime(2026, 11, 22, 9, 15, 0, tzinfo=datetime.timezone.utc)
TARGET = "AmazonEC2ContainerServiceV20141113."
JSON11 = "application/x-amz-json-1.1"

# botocore reads the clock through this module-level function.
botocore.auth.get_current_datetime = lambda: NOW.replace(tzinfo=None)


def ecs_headers(action, **extra):
    headers = {"Content-Type": JSON11, "X-Amz-Target": TARGET + action}
    headers.update(extra)
    return headers


CASES = [
    # (name, method, url, headers, body)
    ("list-clusters", "POST", "https://127.0.0.1:8443/", ecs_headers("ListClusters"), b"{}"),
    (
        "create-cluster-default-port",
        "POST",
        "https://ecs.skiff.example/",
        ecs_headers("CreateCluster"),
        json.dumps({"clusterName": "edge-lyon"}).encode(),
    ),
    (
        "run-task-non-ascii-body",
        "POST",
        "http://localhost:8080/",
        ecs_headers("RunTask"),
        json.dumps(
            {
                "cluster": "café",
                "taskDefinition": "web:3",
                "tags": [{"key": "owner", "value": "Zoë ✓ 東京"}],
            },
            ensure_ascii=False,
        ).encode("utf-8"),
    ),
    (
        "path-to-encode-and-query",
        "POST",
        "http://localhost:8080/a%20b/c~d/./e//f%2Fg/caf%C3%A9/x:y/?b=2&a=%2F1&a=0&c&empty=",
        ecs_headers("ListTasks"),
        b'{"maxResults":10}',
    ),
    (
        "folded-header-spaces",
        "POST",
        "http://localhost:8080/",
        ecs_headers("ListServices", **{"X-Skiff-Note": "  several   spaces \t and  a tab  "}),
        b'{"cluster":"default"}',
    ),
    (
        "content-sha256-header",
        "POST",
        "http://localhost:8080/",
        ecs_headers(
            "DescribeClusters",
            **{
                "X-Amz-Content-SHA256": __import__("hashlib")
                .sha256(b'{"clusters":["default"]}')
                .hexdigest()
            },
        ),
        b'{"clusters":["default"]}',
    ),
    (
        # With a Date header, botocore signs Date (RFC 2822, "-0000") instead of X-Amz-Date.
        "date-header-instead-of-x-amz-date",
        "POST",
        "http://localhost:8080/",
        ecs_headers("ListClusters", Date="placeholder"),
        b"{}",
    ),
    ("get-empty-body", "GET", "http://localhost:8080/ping", {}, b""),
]


def sign(name, method, url, headers, body):
    request = AWSRequest(method=method, url=url, headers=headers, data=body)
    auth = botocore.auth.SigV4Auth(Credentials(ACCESS_KEY_ID, SECRET), SERVICE, REGION)
    auth.add_auth(request)
    # What the client sends: its headers plus the Host that the HTTP client adds.
    sent = list(request.headers.items())
    if not any(k.lower() == "host" for k, _ in sent):
        sent.append(("Host", botocore.auth._host_from_url(url)))
    parts = urlsplit(url)
    return {
        "name": name,
        "method": method,
        "path": parts.path,
        "query": parts.query,
        "headers": [[k, v] for k, v in sent],
        "body": body.decode("utf-8"),
    }


def main():
    fixture = {
        "generator": f"botocore {botocore.__version__} SigV4Auth (gen_botocore.py)",
        "access_key_id": ACCESS_KEY_ID,
        "secret": SECRET,
        "region": REGION,
        "service": SERVICE,
        "now_unix": int(NOW.timestamp()),
        "requests": [sign(*case) for case in CASES],
    }
    json.dump(fixture, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
