"""`make bench`: the sidecar against its ceiling, a bare axum server serving the same bytes.

    make bench                 # builds the static release and the ceiling, installs wrk, runs this
    .venv/bin/python bench/bench.py SIDECAR CEILING [--rounds N] [--seconds S] [--secrets 1,20,200]
                                                    [--requests N]

The ceiling is bench/ceiling, built with the sidecar's release profile and flags (`make ceiling`). The
sidecar reads 1, 20 and 200 secrets from moto (the emulator in .venv). wrk (Debian's) is the load generator.
Every round measures the ceiling and each sidecar in pairs (ceiling, sidecar 1, ceiling, sidecar 20, ...),
which of the two goes first alternating from one round to the next, so that neither is always the one that
follows the other; each ratio is taken between the two runs of a pair before the median over the rounds is
taken: on a shared machine absolute numbers move between minutes, neighbouring runs much less.

Per round and number of secrets: a fresh sidecar (exec -> first 200 on /healthz, i.e. every secret fetched
and written once), its resident memory idle and after --requests GETs at 64 connections, then wrk with 64
connections (2 threads) and with 1 for --seconds each, on the ceiling and on the sidecar: req/s, p50 and
p99 latency, server CPU (utime + stime from /proc/PID/stat) per request. The table prints medians.

Fails (exit status 1) on any answer that is not 200, any error wrk counts (connect, read, write, timeout,
status >= 400), a body that differs from the ceiling's, or a cell of the table left empty. CI runs it with
one short round (scripts/test.sh). Everything binds 127.0.0.1 and is stopped at the end.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

# One secret value, the shape of an RDS secret; the ceiling serves the same bytes.
VALUE = json.dumps({"username": "app", "password": "0123456789abcdef0123456789abcdef", "engine": "postgres",
                    "host": "db.cluster-abc.eu-west-1.rds.amazonaws.com", "port": 5432, "dbname": "app"})
PATH = "/v1/secrets/s0"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# wrk's Lua: the token (if any) from the environment, so it is on no command line; the summary as one
# JSON line.
WRK_SCRIPT = r"""
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then wrk.headers["X-Secrets-Sidecar-Token"] = token end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class BenchError(Exception):
    pass


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


def cpu_seconds(pid):
    """utime + stime of the whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def get(port, path, headers=None, timeout=1):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_http(port, path, timeout=60, every=0.1, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{proc.args[0]} exited with {proc.returncode} before 127.0.0.1:{port}{path} answered 200")
        try:
            if get(port, path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(every)
    raise BenchError(f"127.0.0.1:{port}{path} did not answer 200 within {timeout} s")


def start_moto():
    """moto's server from the venv this script runs in; (process, port)."""
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    port = free_port()
    moto = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(port, "/moto-api/", proc=moto)
    return moto, port


def create_secrets(moto_port, n, value=VALUE):
    import boto3  # the venv's; imported here so --help works anywhere

    sm = boto3.client("secretsmanager", endpoint_url=f"http://127.0.0.1:{moto_port}")
    names = [f"bench-{n}-{i}" for i in range(n)]
    for name in names:
        sm.create_secret(Name=name, SecretString=value)
    return names


def start_sidecar(binary, moto_port, names):
    """A sidecar serving `names` as s0, s1, ...: (process, port, start -> ready in ms, token)."""
    out = tempfile.mkdtemp(prefix="bench-out-")
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
        wait_http(port, "/healthz", every=0.002, proc=proc)
        ready_ms = (time.perf_counter() - started) * 1e3
        with open(os.path.join(out, ".token")) as f:
            token = f.read()
    except BaseException:
        stop(proc)
        raise
    return proc, port, ready_ms, token


def stop(proc):
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Wrk:
    def __init__(self):
        fd, self.script = tempfile.mkstemp(prefix="bench-", suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(WRK_SCRIPT)

    def run(self, port, token, connections, seconds, what):
        threads = min(2, connections)
        env = dict(os.environ, BENCH_TOKEN=token or "")
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", self.script,
               f"http://127.0.0.1:{port}{PATH}"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
        lines = [line for line in res.stdout.splitlines() if line.startswith("BENCH-JSON ")]
        if res.returncode != 0 or len(lines) != 1:
            raise BenchError(f"wrk on {what} failed (exit {res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
        r = json.loads(lines[0].split(" ", 1)[1])
        errors = {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]}
        if errors or r["requests"] == 0:
            raise BenchError(f"wrk on {what}, {connections} connection(s): {r['requests']} requests, errors {errors} "
                             "(status counts answers >= 400)")
        r["rate"] = r["requests"] / (r["duration_us"] / 1e6)
        return r


def load(wrk, proc, port, token, connections, seconds, what):
    """One wrk run; its numbers and the server's CPU per request."""
    before = cpu_seconds(proc.pid)
    r = wrk.run(port, token, connections, seconds, what)
    r["cpu_us"] = (cpu_seconds(proc.pid) - before) / r["requests"] * 1e6
    return r


def check_body(port, token, want, what):
    status, body = get(port, PATH, {"X-Secrets-Sidecar-Token": token} if token else {})
    if status != 200 or body != want:
        raise BenchError(f"{what} answered {status} with a body of {len(body)} bytes, not the {len(want)} expected")


def sidecar_name(n):
    return f"the sidecar ({n} secret{'s' * (n != 1)})"


def med(values):
    return statistics.median(values) if values else None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sidecar")
    p.add_argument("ceiling")
    # 9, not 5: on a shared 2-core machine the median of 5 rounds moved by several percent from one full
    # run of the same build to the next, and one round's p99 ratio alone by a factor of four
    # (docs/benchmarks.md).
    p.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 9)))
    p.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", 5)), help="per wrk run")
    p.add_argument("--secrets", default=os.environ.get("BENCH_SECRETS", "1,20,200"), help="comma-separated counts")
    p.add_argument("--requests", type=int, default=int(os.environ.get("BENCH_REQUESTS", 100_000)),
                   help="GETs before the second RSS reading")
    args = p.parse_args()
    counts = [int(n) for n in args.secrets.split(",")]
    try:
        results = bench(args, counts)
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    return report(args, counts, results)


def bench(args, counts):
    wrk = Wrk()
    moto, moto_port = start_moto()
    ceiling = None
    try:
        names = {n: create_secrets(moto_port, n) for n in counts}
        body_file = os.path.join(tempfile.mkdtemp(prefix="bench-"), "body.json")
        with open(body_file, "w") as f:
            f.write(VALUE)
        c_port = free_port()
        ceiling = subprocess.Popen([args.ceiling, str(c_port), body_file])
        wait_http(c_port, PATH, proc=ceiling)
        check_body(c_port, None, VALUE.encode(), "the ceiling")
        wrk.run(c_port, None, 64, 1, "the ceiling (warm-up)")
        # results[key][metric] -> list over rounds; key "ceiling" or a count of secrets.
        results = {k: {} for k in ["ceiling", *counts]}

        def add(key, metric, value):
            results[key].setdefault(metric, []).append(value)

        for rnd in range(args.rounds):
            for n in counts:
                proc, port, ready_ms, token = start_sidecar(args.sidecar, moto_port, names[n])
                try:
                    time.sleep(0.5)  # settle: what an idle sidecar holds, not the start-up's last breath
                    add(n, "rss_idle", status_kib(proc.pid, "VmRSS") / 1024)
                    add(n, "ready_ms", ready_ms)
                    done = 0
                    while done < args.requests:
                        done += wrk.run(port, token, 64, 1, sidecar_name(n))["requests"]
                    add(n, "rss_loaded", status_kib(proc.pid, "VmRSS") / 1024)
                    add(n, "requests_done", done)
                    check_body(port, token, VALUE.encode(), sidecar_name(n))
                    for conns in (64, 1):
                        if rnd % 2 == 0:
                            c = load(wrk, ceiling, c_port, token, conns, args.seconds, "the ceiling")
                            s = load(wrk, proc, port, token, conns, args.seconds, sidecar_name(n))
                        else:
                            s = load(wrk, proc, port, token, conns, args.seconds, sidecar_name(n))
                            c = load(wrk, ceiling, c_port, token, conns, args.seconds, "the ceiling")
                        for metric in ("rate", "p50_us", "p99_us", "cpu_us"):
                            add("ceiling", f"{metric}@{conns}", c[metric])
                            add(n, f"{metric}@{conns}", s[metric])
                            add(n, f"{metric}@{conns}/ceiling", s[metric] / c[metric] if c[metric] else float("nan"))
                finally:
                    stop(proc)
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        add("ceiling", "rss_loaded", status_kib(ceiling.pid, "VmRSS") / 1024)
        return results
    finally:
        if ceiling is not None:
            stop(ceiling)
        stop(moto)
        os.unlink(wrk.script)


def report(args, counts, results):
    size = {"ceiling": os.path.getsize(args.ceiling) / 2**20, "sidecar": os.path.getsize(args.sidecar) / 2**20}
    rows = [
        # label, metric, format, with a ratio to the ceiling
        ("GET req/s, 64 connections", "rate@64", "{:.0f}", True),
        ("  p50 latency @64 (us)", "p50_us@64", "{:.0f}", True),
        ("  p99 latency @64 (us)", "p99_us@64", "{:.0f}", True),
        ("  server CPU per request @64 (us)", "cpu_us@64", "{:.1f}", True),
        ("GET req/s, 1 connection", "rate@1", "{:.0f}", True),
        ("  p50 latency @1 (us)", "p50_us@1", "{:.0f}", True),
        ("  p99 latency @1 (us)", "p99_us@1", "{:.0f}", True),
        ("  server CPU per request @1 (us)", "cpu_us@1", "{:.1f}", True),
        ("RSS idle, ready (MiB)", "rss_idle", "{:.1f}", False),
        (f"RSS after {args.requests // 1000}k+ requests (MiB)", "rss_loaded", "{:.1f}", False),
        ("start -> ready (ms)", "ready_ms", "{:.0f}", False),
    ]
    keys = ["ceiling", *counts]
    heads = ["ceiling"] + [f"{n} secret{'s' * (n != 1)}" for n in counts]
    width = 38
    out = [f"{args.rounds} alternated round(s) of {args.seconds} s per wrk run; medians; (x) = median of the "
           "per-round ratios sidecar / ceiling",
           "".ljust(width) + "".join(h.rjust(18) for h in heads)]
    missing = []
    for label, metric, fmt, ratio in rows:
        cells = []
        for k in keys:
            v = med(results[k].get(metric, []))
            if v is None:
                if k == "ceiling" and metric in ("rss_idle", "ready_ms"):
                    cells.append("-")
                    continue
                missing.append(f"{label} / {k}")
                cells.append("MISSING")
                continue
            text = fmt.format(v)
            if ratio and k != "ceiling":
                r = med(results[k].get(metric + "/ceiling", []))
                text += f" ({r:.2f}x)"
            cells.append(text)
        out.append(label.ljust(width) + "".join(c.rjust(18) for c in cells))
    out.append("static stripped binary (MiB)".ljust(width) + f"{size['ceiling']:.2f}".rjust(18)
               + "".join(f"{size['sidecar']:.2f}".rjust(18) for _ in counts))
    print("\n".join(out))
    if missing:
        print(f"bench failed: no value for {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
