"""500 slow local clients against the running sidecar (release build, 1 secret from moto).

    make bench-storm                # builds the release binary first
    .venv/bin/python bench/storm.py PATH/TO/secrets-sidecar

Half the clients send nothing, half a partial request head. Prints the latency of GET /v1/secrets/NAME on a
fresh connection during the storm, resident memory before, during and 7 s later (a connection that
completes no request head is closed 5 s after it connected), and how many of the 500 connections are
still open then. Start-up, memory under load and throughput are `make bench` (bench/bench.py), whose
helpers this script uses. Everything binds 127.0.0.1.
"""

import http.client
import socket
import statistics
import sys
import time

from bench import create_secrets, start_moto, start_sidecar, status_kib, stop

STORM = 500
REQUESTS = 500


def timed_get(port, path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t = time.perf_counter()
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status == 200, (path, r.status)
    return time.perf_counter() - t


def main():
    moto, moto_port = start_moto()
    try:
        proc, port, _, token = start_sidecar(sys.argv[1], moto_port, create_secrets(moto_port, 1))
        try:
            auth = {"X-Secrets-Sidecar-Token": token}
            before = status_kib(proc.pid, "VmRSS")
            socks = []
            for i in range(STORM):
                s = socket.create_connection(("127.0.0.1", port))
                if i % 2:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                socks.append(s)
            during = [timed_get(port, "/v1/secrets/s0", auth) for _ in range(REQUESTS)]
            storm_rss = status_kib(proc.pid, "VmRSS")
            time.sleep(7)
            after_rss = status_kib(proc.pid, "VmRSS")
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
        finally:
            stop(proc)
    finally:
        stop(moto)
    p99 = statistics.quantiles(during, n=100)[98] * 1e6
    print(f"{STORM} slow clients: GET median {statistics.median(during) * 1e6:.0f} us (p99 {p99:.0f}), RSS before "
          f"{before / 1024:.1f} MiB, during {storm_rss / 1024:.1f} MiB, 7 s later {after_rss / 1024:.1f} MiB with "
          f"{still_open} of them still open")


if __name__ == "__main__":
    main()
