#!/usr/bin/env python3
"""bench/usage.py — how long GET /_sluice/usage takes on a large history.

Issue 14 wants /_sluice/usage to answer in under 200 ms on a 100,000-record
history. This fills a history database with that many realistic records and
times the endpoint with each group_by, reporting the median (and min/max) of
several runs. `scripts/bench --usage` runs it; bench/README.md explains the
method.

How the database is made: the sluice binary under test starts once on an
empty history file and creates the schema itself (table, indexes — whatever
that build creates at open), then stops; this script then inserts the
records straight into that table with Python's sqlite3 in one transaction
(about a second for 100,000, where sending 100,000 requests through the
gateway would take minutes and measure the proxy, not the query). Only
columns the binary created are filled, so an older binary's schema works
too. Then sluice starts again on the filled file, as an operator would
restart it on a long-lived history, and the timings are taken over loopback
HTTP from this process: what an operator's browser would wait, plus a
fraction of a millisecond of Python.

The records are generated from a fixed seed, so every run — and every
binary compared — sees the same history: 30 days of traffic from 5 clients
with 20 gateway keys, 6 suppliers, 12 models, some errors, some cut
streams, a few records without a TTFB or without usage.

`--compare OTHER_BINARY` also asks OTHER_BINARY the same questions on the same
file and fails unless every answer is byte-for-byte the same (the check that
an optimisation kept the results).
"""

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

# Starting, reaching and stopping sluice: the e2e tests' own helpers.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import harness  # noqa: E402

GROUPS = ["none", "key", "model", "supplier", "client", "service", "day", "hour", "model,client"]

CLIENTS = [("claude-code", "claude", "/v1/messages", 0.45), ("codex", "codex", "/v1/responses", 0.25),
           ("gemini-cli", "gemini", "/v1beta/models/gemini-2.5-pro:streamGenerateContent", 0.1),
           ("openai-sdk", "chat", "/v1/chat/completions", 0.15), ("curl", "chat", "/v1/chat/completions", 0.05)]
# model -> (supplier, USD per million input, output, cache read)
MODELS = {
    "claude-sonnet-4-5": ("anthropic", 3.0, 15.0, 0.3), "claude-opus-4-1": ("anthropic", 15.0, 75.0, 1.5),
    "claude-haiku-4-5": ("bedrock", 1.0, 5.0, 0.1), "gpt-5": ("openai", 1.25, 10.0, 0.125),
    "gpt-5-mini": ("openai", 0.25, 2.0, 0.025), "gpt-4.1": ("azure", 2.0, 8.0, 0.5),
    "gemini-2.5-pro": ("gemini", 1.25, 10.0, 0.31), "gemini-2.5-flash": ("gemini", 0.3, 2.5, 0.075),
    "qwen3-coder": ("local", 0.0, 0.0, 0.0), "deepseek-v3": ("local", 0.0, 0.0, 0.0),
    "glm-4.6": ("zhipu", 0.6, 2.2, 0.11), "kimi-k2": ("local", 0.0, 0.0, 0.0),
}
BY_SERVICE = {"claude": ["claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5", "glm-4.6"],
              "codex": ["gpt-5", "gpt-5-mini", "qwen3-coder"],
              "gemini": ["gemini-2.5-pro", "gemini-2.5-flash"],
              "chat": ["gpt-4.1", "gpt-5-mini", "deepseek-v3", "kimi-k2", "qwen3-coder"]}
DAYS = 30


def record(rnd, i, now):
    """One history row as a column -> value dict."""
    u = rnd.random()
    for client, service, path, share in CLIENTS:
        u -= share
        if u < 0:
            break
    model = rnd.choice(BY_SERVICE[service])
    supplier, p_in, p_out, p_cr = MODELS[model]
    t = now - rnd.random() * DAYS * 86400
    r = rnd.random()
    status, reason, partial, err = 200, "COMPLETE", 0, None
    if r < 0.02:
        status, reason, err = 429, "UPSTREAM_HTTP_ERROR", "partial=false; reason=UPSTREAM_HTTP_ERROR"
    elif r < 0.03:
        status, reason, err = 502, "UPSTREAM_CONNECT", "partial=false; reason=UPSTREAM_CONNECT; connection refused"
    elif r < 0.04:
        reason, partial = "UPSTREAM_EOF_EARLY", 1
        err = "partial=true; reason=UPSTREAM_EOF_EARLY; upstream closed the connection"
    elif r < 0.045:
        status, reason, err = 0, "CLIENT_ABORT", "partial=false; reason=CLIENT_ABORT"
    ttfb = None if status in (0, 502) or rnd.random() < 0.02 else rnd.lognormvariate(6.3, 0.7)
    dur = (ttfb or 5.0) + rnd.lognormvariate(8.3, 1.0)
    inp = out = cr = cw = cost = None
    if status == 200 and rnd.random() > 0.03:
        inp = int(rnd.lognormvariate(10.0, 1.0))
        cr = int(inp * rnd.random() * 0.9)
        cw = int((inp - cr) * rnd.random() * 0.3) if service == "claude" else 0
        out = int(rnd.lognormvariate(6.0, 1.2))
        if p_in or supplier != "local":
            cost = ((inp - cr - cw) * p_in + cr * p_cr + cw * p_in * 1.25 + out * p_out) / 1e6
    key = None if rnd.random() < 0.05 else "key#%d" % (1 + int(rnd.paretovariate(1.2)) % 20)
    attempts = 2 if status == 200 and rnd.random() < 0.02 else 1
    alog = [{"supplier": supplier, "status": 429, "error": None, "duration_ms": 80.0}] if attempts == 2 else []
    alog.append({"supplier": supplier, "status": status, "error": None, "duration_ms": round(dur, 1)})
    return {
        "id": "req_%032x" % rnd.getrandbits(128), "time": t, "client": client, "service": service,
        "method": "POST", "path": path, "route": service, "supplier": supplier, "model_in": model,
        "model_out": model, "status": status, "duration_ms": dur, "ttfb_ms": ttfb,
        "bytes_in": int(rnd.lognormvariate(10.5, 1.0)), "bytes_out": int(rnd.lognormvariate(9.0, 1.0)),
        "input_tokens": inp, "output_tokens": out, "cache_read_tokens": cr, "cache_write_tokens": cw,
        "cost": cost, "gateway_key": key, "reason": reason, "partial": partial,
        "expected": 1 if reason == "CLIENT_ABORT" else 0, "error": err, "attempts": attempts,
        "attempts_json": json.dumps(alog),
        "extra_json": json.dumps({"session": "%016x" % rnd.getrandbits(64),
                                  "binding": {"supplier": supplier, "key_index": 1}}),
    }


CONFIG = """return {
  listen = { "127.0.0.1:%(port)d" },
  workers = 1,
  log = { access = "off" },
  history = { path = "%(db)s", max = %(max)d },
  suppliers = { up = { protocol = "openai-chat", base_url = "http://127.0.0.1:9/v1", auth = { type = "none" } } },
  routes = { chat = { { match = "*", supplier = "up" } } },
}
"""


class Sluice:
    """A sluice process on the history file, stopped with SIGTERM."""

    def __init__(self, binary, work, db, records):
        self.port = harness.free_port()
        cfg = os.path.join(work, "sluice-%d.lua" % self.port)
        with open(cfg, "w") as f:
            f.write(CONFIG % {"port": self.port, "db": db, "max": records * 10})
        self.log = open(os.path.join(work, "sluice-%d.log" % self.port), "w")
        self.proc = subprocess.Popen([binary, "-c", cfg], cwd=work, stdout=self.log, stderr=self.log)
        if not harness.wait_for(lambda: self.proc.poll() is not None or self.up(), timeout=15) \
                or self.proc.poll() is not None:
            self.stop()
            sys.exit("bench/usage: sluice did not start; see %s" % self.log.name)

    def up(self):
        try:
            return self.get("/_sluice/health")[0] == 200
        except OSError:
            return False

    def get(self, path):
        r = harness.request(self.port, "GET", path)
        return r.status, r.body

    def stop(self):
        harness.end_process(self.proc, 15)
        self.log.close()


def fill(binary, work, db, n, seed):
    Sluice(binary, work, db, n).stop()  # the binary creates its schema
    con = sqlite3.connect(db)
    cols = [r[1] for r in con.execute("PRAGMA table_info(requests)") if r[1] != "seq"]
    rnd = random.Random(seed)
    now = time.time()
    rows = (record(rnd, i, now) for i in range(n))
    sql = "INSERT INTO requests(%s) VALUES(%s)" % (", ".join(cols), ", ".join("?" * len(cols)))
    t0 = time.monotonic()
    with con:
        # rows go in in time order, as the writer appends them
        batch = sorted(rows, key=lambda r: r["time"])
        con.executemany(sql, ([r.get(c) for c in cols] for r in batch))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return time.monotonic() - t0


def query(g):
    return "/_sluice/usage" + ("" if g == "none" else "?group_by=" + g)


def time_all(s, runs):
    out = {}
    for g in GROUPS:
        status, body = s.get(query(g))  # warm-up: page cache, prepared plans
        if status != 200:
            sys.exit("bench/usage: %s answered %d: %s" % (query(g), status, body[:200]))
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            status, body = s.get(query(g))
            times.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                sys.exit("bench/usage: %s answered %d" % (query(g), status))
        out[g] = (statistics.median(times), min(times), max(times), len(json.loads(body)["rows"]))
    return out


def answers(s, since_until):
    got = {}
    for g in GROUPS:
        for extra in ("",) + since_until:
            path = query(g) + (("&" if "?" in query(g) else "?") + extra if extra else "")
            got[path] = s.get(path)
    return got


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sluice", required=True, help="the sluice binary to measure")
    ap.add_argument("--records", type=int, default=100000)
    ap.add_argument("--runs", type=int, default=7, help="timed runs per group_by (median reported)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--db", help="use (and keep) this history file; filled only when absent")
    ap.add_argument("--compare", metavar="OTHER_BINARY",
                    help="check that OTHER_BINARY gives byte-identical answers on the same file")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sluice-bench-usage-")
    try:
        db = os.path.abspath(a.db) if a.db else os.path.join(work, "history.db")
        if not os.path.exists(db):
            secs = fill(os.path.abspath(a.sluice), work, db, a.records, a.seed)
            print("bench/usage: %d records inserted in %.1f s (%.1f MB)" %
                  (a.records, secs, os.path.getsize(db) / 1e6))
        s = Sluice(os.path.abspath(a.sluice), work, db, a.records)
        try:
            res = time_all(s, a.runs)
            mine = answers(s, ("since=%d" % (time.time() - 7 * 86400), "until=%d" % (time.time() - 86400)))
        finally:
            s.stop()
        print("GET /_sluice/usage on %d records, %d runs each (ms; target < 200):" % (a.records, a.runs))
        print("  %-14s %8s %8s %8s %6s" % ("group_by", "median", "min", "max", "rows"))
        for g, (med, lo, hi, nrows) in res.items():
            print("  %-14s %8.1f %8.1f %8.1f %6d%s" % (g, med, lo, hi, nrows, "" if med < 200 else "  OVER"))
        if a.compare:
            o = Sluice(os.path.abspath(a.compare), work, db, a.records)
            try:
                theirs = {p: o.get(p) for p in mine}  # the very same paths and bounds
            finally:
                o.stop()
            diff = [p for p in mine if mine[p] != theirs[p]]
            for p in diff:
                print("  DIFFERENT: %s" % p)
            print("bench/usage: %d answers compared with %s: %s" %
                  (len(mine), a.compare, "identical" if not diff else "%d differ" % len(diff)))
            if diff:
                return 1
        return 0
    finally:
        shutil.rmtree(work, True)


if __name__ == "__main__":
    sys.exit(main())
