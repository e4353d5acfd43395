"""Memory and request cost of the running sidecar (release build) against moto.

    make bench-footprint            # builds the release binary first
    .venv/bin/python bench/footprint.py PATH/TO/secrets-sidecar

For 1, 20 and 200 secrets: resident memory (VmRSS) once ready and after 5,000 keep-alive requests, peak
(VmHWM), and the median / 99th percentile latency of GET /v1/secrets/NAME next to GET /healthz over the
same connection. Shared machines are noisy: read the medians and the ratio between the two routes, not
single times. Everything binds 127.0.0.1 and is stopped at the end.

With 1 secret also a slow-client storm (issue 8): 500 local connections that send nothing or half a
request head, the latency of GET /v1/secrets/NAME on a fresh connection during it, RSS during it, and
RSS and open connections 7 s later (the header-read timeout is 5 s).
"""

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import boto3

REQUESTS = 5_000
STORM = 500
STORM_REQUESTS = 500


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def wait_http(port, path, timeout=30, every=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(every)
    raise SystemExit(f"127.0.0.1:{port}{path} did not answer 200")


def timed(conn, path, headers):
    t = time.perf_counter()
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    r.read()
    assert r.status == 200, (path, r.status)
    return time.perf_counter() - t


def run(binary, moto_port, n_secrets):
    sm = boto3.client("secretsmanager", endpoint_url=f"http://127.0.0.1:{moto_port}")
    names = [f"bench-{n_secrets}-{i}" for i in range(n_secrets)]
    for n in names:
        sm.create_secret(Name=n, SecretString=json.dumps({"username": "app", "password": "x" * 32}))
    out = tempfile.mkdtemp()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SIDECAR_SECRETS=",".join(f"s{i}={n}" for i, n in enumerate(names)), SIDECAR_LOG="warn")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [binary, "--output-dir", out, "--listen", f"127.0.0.1:{port}", "--endpoint-url", f"http://127.0.0.1:{moto_port}"],
        env=env, stdout=subprocess.DEVNULL,
    )
    try:
        # Start -> ready: every secret fetched and written once (/healthz 200), polled every 2 ms.
        wait_http(port, "/healthz", every=0.002)
        ready_ms = (time.perf_counter() - started) * 1e3
        ready_rss = status_kib(proc.pid, "VmRSS")
        token = open(os.path.join(out, ".token")).read()
        conn = http.client.HTTPConnection("127.0.0.1", port)
        auth = {"X-Secrets-Sidecar-Token": token}
        secret, health = [], []
        for _ in range(REQUESTS):
            secret.append(timed(conn, "/v1/secrets/s0", auth))
            health.append(timed(conn, "/healthz", {}))
        loaded_rss, peak = status_kib(proc.pid, "VmRSS"), status_kib(proc.pid, "VmHWM")
        storm = slow_client_storm(proc.pid, port, auth) if n_secrets == 1 else None
    finally:
        proc.terminate()
        proc.wait(5)

    def q(v, p):
        return statistics.quantiles(v, n=100)[p - 1] * 1e6

    print(f"{n_secrets:>3} secrets: start -> ready {ready_ms:.0f} ms; RSS ready {ready_rss / 1024:.1f} MiB, after {REQUESTS} requests "
          f"{loaded_rss / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")
    print(f"           GET /v1/secrets/NAME median {statistics.median(secret) * 1e6:.0f} us (p99 {q(secret, 99):.0f}), "
          f"GET /healthz median {statistics.median(health) * 1e6:.0f} us (p99 {q(health, 99):.0f}), "
          f"ratio {statistics.median(secret) / statistics.median(health):.2f}")
    if storm:
        during, storm_rss, after_rss, still_open = storm
        print(f"           {STORM} slow clients: GET median {statistics.median(during) * 1e6:.0f} us "
              f"(p99 {q(during, 99):.0f}), RSS during {storm_rss / 1024:.1f} MiB, 7 s later "
              f"{after_rss / 1024:.1f} MiB with {still_open} of them still open")


def slow_client_storm(pid, port, auth):
    socks = []
    for i in range(STORM):
        s = socket.create_connection(("127.0.0.1", port))
        if i % 2:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(s)
    during = []
    for _ in range(STORM_REQUESTS):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        during.append(timed(conn, "/v1/secrets/s0", auth))
        conn.close()
    storm_rss = status_kib(pid, "VmRSS")
    time.sleep(7)
    after_rss = status_kib(pid, "VmRSS")
    still_open = 0
    for s in socks:
        s.setblocking(False)
        try:
            still_open += s.recv(1) != b""
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
        s.close()
    return during, storm_rss, after_rss, still_open


def main():
    binary = sys.argv[1]
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    moto_port = free_port()
    moto = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                             "-p", str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(moto_port, "/moto-api/")
        for n in (1, 20, 200):
            run(binary, moto_port, n)
    finally:
        moto.terminate()
        moto.wait(5)


if __name__ == "__main__":
    main()
