"""test_metrics — /_sluice/metrics through the real binary (issue 3).

The counters must move by exactly what the test sent: N requests of a kind
add N to sluice_requests_total{service,supplier,status}, each way a request
ended adds to sluice_outcomes_total{reason,partial}, the duration and
first-byte histograms count every request, a SIGHUP adds one to
sluice_reloads_total{result="ok"} (a broken config to result="failed"), an
on_request hook that raises adds one to sluice_script_errors_total. The
gauges show what is in flight (an open stream, open connections) and fall
back when it ends. Admin calls are not proxied requests and count nowhere.

Every scrape is parsed strictly as Prometheus text exposition 0.0.4 (see
parse_prometheus below): a syntax error, a sample of an undeclared family,
a duplicated series, or a histogram whose buckets are not cumulative fails
the test. Retries are off (`retry.attempts = 1`) so one request is one
upstream attempt.
"""

import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import RawConn, build_request  # noqa: E402

# ---------------------------------------------------------------- Prometheus text format

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
SAMPLE_RE = re.compile(r"^(%s)(\{.*\})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?$" % NAME)
LABEL_RE = re.compile(r'(%s)="((?:[^"\\\n]|\\[\\"n])*)"' % LABEL)
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class ParseError(Exception):
    pass


def parse_labels(text):
    """'{a="x",b="y\\"z"}' -> (("a","x"),("b",'y"z')) in order; raises ParseError."""
    inner, out, pos = text[1:-1], [], 0
    while pos < len(inner):
        m = LABEL_RE.match(inner, pos)
        if not m:
            raise ParseError("bad label set %r at %d" % (text, pos))
        value = re.sub(r"\\(.)", lambda e: {"n": "\n"}.get(e.group(1), e.group(1)), m.group(2))
        out.append((m.group(1), value))
        pos = m.end()
        if pos < len(inner):
            if inner[pos] != ",":
                raise ParseError("expected ',' in %r" % text)
            pos += 1
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ParseError("duplicate label name in %r" % text)
    return tuple(out)


def parse_value(s):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    try:
        return float(s)
    except ValueError:
        raise ParseError("bad sample value %r" % s)


def family_of(name, types):
    """The declared family a sample name belongs to (histogram/summary suffixes allowed)."""
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[:-len(suffix)]
        if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
            if suffix == "_bucket" and types[base] != "histogram":
                break
            return base
    raise ParseError("sample %s of an undeclared family" % name)


def parse_prometheus(text):
    """Strictly parses exposition text; returns (types, samples) where samples
    maps (name, frozenset(labels)) -> value. Raises ParseError."""
    if text and not text.endswith("\n"):
        raise ParseError("text does not end with a newline")
    types, helps, samples, seen_families = {}, {}, {}, []
    for ln, line in enumerate(text.split("\n")[:-1], 1):
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                if not re.fullmatch(NAME, parts[2]):
                    raise ParseError("line %d: bad metric name %r" % (ln, parts[2]))
                if parts[1] == "TYPE":
                    if len(parts) != 4 or parts[3] not in TYPES:
                        raise ParseError("line %d: bad TYPE line %r" % (ln, line))
                    if parts[2] in types:
                        raise ParseError("line %d: second TYPE for %s" % (ln, parts[2]))
                    if any(k[0] == parts[2] or family_of(k[0], types) == parts[2] for k in samples):
                        raise ParseError("line %d: TYPE after samples of %s" % (ln, parts[2]))
                    types[parts[2]] = parts[3]
                else:
                    if parts[2] in helps:
                        raise ParseError("line %d: second HELP for %s" % (ln, parts[2]))
                    helps[parts[2]] = parts[3] if len(parts) > 3 else ""
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise ParseError("line %d: not a sample: %r" % (ln, line))
        name, labels = m.group(1), parse_labels(m.group(2)) if m.group(2) else ()
        fam = family_of(name, types)
        if seen_families and seen_families[-1] != fam and fam in seen_families:
            raise ParseError("line %d: samples of %s are not grouped together" % (ln, fam))
        if not seen_families or seen_families[-1] != fam:
            seen_families.append(fam)
        key = (name, frozenset(labels))
        if key in samples:
            raise ParseError("line %d: duplicate series %s%s" % (ln, name, m.group(2) or ""))
        samples[key] = parse_value(m.group(3))
    check_histograms(types, samples)
    return types, samples


def check_histograms(types, samples):
    for fam, t in types.items():
        if t != "histogram":
            continue
        groups = {}
        for (name, labels), v in samples.items():
            if name == fam + "_bucket":
                d = dict(labels)
                if "le" not in d:
                    raise ParseError("%s bucket without le" % fam)
                rest = frozenset((k, x) for k, x in labels if k != "le")
                groups.setdefault(rest, []).append((parse_value(d["le"]), v))
        for rest, buckets in groups.items():
            buckets.sort()
            if buckets[-1][0] != math.inf:
                raise ParseError("%s has no +Inf bucket" % fam)
            counts = [v for _, v in buckets]
            if counts != sorted(counts):
                raise ParseError("%s buckets are not cumulative: %r" % (fam, buckets))
            count = samples.get((fam + "_count", rest))
            if count is None or (fam + "_sum", rest) not in samples:
                raise ParseError("%s lacks _count or _sum" % fam)
            if count != counts[-1]:
                raise ParseError("%s_count %r != +Inf bucket %r" % (fam, count, counts[-1]))


# ---------------------------------------------------------------- fixtures

CHAT_JSON = json.dumps({
    "id": "chatcmpl-m", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
CHAT_REQ = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE_REQ = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
GEMINI_REQ = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
GEMINI_JSON = json.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},
                                          "finishReason": "STOP", "index": 0}]})
FIRST_CHUNK = "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1,
                                     "model": "gpt-4.1", "choices": [{"index": 0, "delta": {
                                         "role": "assistant", "content": ""}, "finish_reason": None}]}) + "\n\n"

BOOM_HOOK = 'function(ctx) if ctx.model == "boom" then error("boom-for-metrics") end end'


def json_scene(body, status=200, repeat=1):
    return {"status": status, "headers": {"Content-Type": "application/json"}, "body": body, "repeat": repeat}


class MetricsCase(harness.SluiceTestCase):
    def start(self, workers=1, **kw):
        d = tempfile.mkdtemp(prefix="sluice-metrics-")
        self.addCleanup(shutil.rmtree, d, True)
        self.extra = '  retry = { attempts = 1 },\n  history = { path = "%s/history.db" },\n' % d
        self.config_kw = dict(kw, extra=self.extra)
        return self.start_sluice(workers=workers, **self.config_kw)

    def scrape(self):
        r = harness.request(self.sluice.port, "GET", "/_sluice/metrics")
        self.assertEqual(r.status, 200, r)
        self.assertTrue((r.header("content-type") or "").startswith("text/plain"), r.headers)
        self.assertIn("version=0.0.4", r.header("content-type"))
        try:
            return parse_prometheus(r.body.decode("utf-8"))[1]
        except ParseError as e:
            self.fail("metrics are not valid Prometheus text: %s\n%s" % (e, r.body.decode()[:3000]))

    @staticmethod
    def value(samples, name, **labels):
        """The value of one series (0 if absent: a counter not yet touched)."""
        return samples.get((name, frozenset(labels.items())), 0.0)

    @staticmethod
    def total(samples, name, **labels):
        """Sum over every series of `name` whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)

    def delta(self, before, after, name, **labels):
        return self.value(after, name, **labels) - self.value(before, name, **labels)


class CounterTest(MetricsCase):
    def test_counters_move_by_exactly_what_was_sent(self):
        self.start(workers=2)
        before = self.scrape()
        # 5 chat answers OK, 3 claude answers 500, 2 gemini OK, 2 chat streams cut early.
        self.mock.enqueue(json_scene(CHAT_JSON, repeat=5))
        for _ in range(5):
            self.assertEqual(self.post("/v1/chat/completions", CHAT_REQ).status, 200)
        self.mock.enqueue(json_scene(json.dumps({"type": "error", "error": {"type": "api_error",
                                                                            "message": "down"}}),
                                     status=500, repeat=3))
        for _ in range(3):
            r = self.post("/v1/messages", CLAUDE_REQ, headers={"anthropic-version": "2023-06-01"})
            self.assertEqual(r.status, 500, r)
        self.mock.enqueue(json_scene(GEMINI_JSON, repeat=2))
        for _ in range(2):
            r = self.post("/v1beta/models/gemini-2.5-flash:generateContent", GEMINI_REQ)
            self.assertEqual(r.status, 200, r)
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"}, "close_after": True,
                           "repeat": 2, "chunks": [{"data": FIRST_CHUNK}]})
        for _ in range(2):
            r = self.post("/v1/chat/completions", dict(CHAT_REQ, stream=True))
            self.assertEqual(r.status, 200, r)
            self.assertTrue(r.body.endswith(b"data: [DONE]\n\n"), r.body)
        for _ in range(3):   # admin calls are not proxied requests
            harness.request(self.sluice.port, "GET", "/_sluice/requests")
            harness.request(self.sluice.port, "GET", "/_sluice/health")
        after = self.scrape()

        rq = "sluice_requests_total"
        self.assertEqual(self.delta(before, after, rq, service="chat", supplier="oa", status="200"), 7)
        self.assertEqual(self.delta(before, after, rq, service="claude", supplier="an", status="500"), 3)
        self.assertEqual(self.delta(before, after, rq, service="gemini", supplier="gm", status="200"), 2)
        self.assertEqual(self.total(after, rq) - self.total(before, rq), 12, "requests counted elsewhere")

        oc = "sluice_outcomes_total"
        self.assertEqual(self.delta(before, after, oc, reason="COMPLETE", partial="false"), 7)
        self.assertEqual(self.delta(before, after, oc, reason="UPSTREAM_HTTP_ERROR", partial="false"), 3)
        self.assertEqual(self.delta(before, after, oc, reason="UPSTREAM_EOF_EARLY", partial="true"), 2)
        self.assertEqual(self.total(after, oc) - self.total(before, oc), 12)

        for h in ("sluice_request_duration_seconds", "sluice_first_byte_seconds"):
            self.assertEqual(self.delta(before, after, h + "_count"), 12, h)
            self.assertEqual(self.delta(before, after, h + "_bucket", le="+Inf"), 12, h)
            self.assertGreater(self.delta(before, after, h + "_sum"), 0, h)

    def test_script_error_counted(self):
        self.start(on_request=BOOM_HOOK)
        before = self.scrape()
        r = self.post("/v1/chat/completions", dict(CHAT_REQ, model="boom"))
        self.assertEqual(r.status, 500, r)
        r = self.post("/v1/chat/completions", dict(CHAT_REQ, model="boom"))
        self.assertEqual(r.status, 500, r)
        self.mock.enqueue(json_scene(CHAT_JSON))
        self.assertEqual(self.post("/v1/chat/completions", CHAT_REQ).status, 200)
        after = self.scrape()
        se = "sluice_script_errors_total"
        self.assertEqual(self.total(after, se) - self.total(before, se), 2,
                         "one per failed hook call: %r" % {k: v for k, v in after.items() if k[0] == se})
        self.assertEqual(self.delta(before, after, se, hook="request"), 2)
        self.assertEqual(self.delta(before, after, "sluice_outcomes_total", reason="SCRIPT_ERROR",
                                    partial="false"), 2)
        self.assertEqual(self.total(after, "sluice_requests_total", status="500")
                         - self.total(before, "sluice_requests_total", status="500"), 2)
        self.assertEqual(self.delta(before, after, "sluice_requests_total", service="chat", supplier="oa",
                                    status="200"), 1)


class ReloadTest(MetricsCase):
    def reload_and_wait(self, result, before):
        self.sluice.reload()
        ok = harness.wait_for(
            lambda: self.delta(before, self.scrape(), "sluice_reloads_total", result=result) >= 1, timeout=10)
        self.assertTrue(ok, "reload not counted as %s%s" % (result, self.diag()))
        time.sleep(0.5)    # any further (wrong) increments would land by now
        return self.scrape()

    def check_reloads(self, workers):
        self.start(workers=workers)
        # sluice answers before its signal handlers are installed (see
        # test_sighup_at_startup_is_a_reload_not_a_kill); let it settle so
        # this test measures the counter, not that race.
        time.sleep(0.5)
        before = self.scrape()
        after = self.reload_and_wait("ok", before)
        self.assertEqual(self.delta(before, after, "sluice_reloads_total", result="ok"), 1,
                         "one SIGHUP is one reload")
        self.assertEqual(self.delta(before, after, "sluice_reloads_total", result="failed"), 0)

        self.sluice.write_config("return { this is not lua")
        before = after
        after = self.reload_and_wait("failed", before)
        self.assertEqual(self.delta(before, after, "sluice_reloads_total", result="failed"), 1)
        self.assertEqual(self.delta(before, after, "sluice_reloads_total", result="ok"), 0)
        # Still serving on the old config.
        self.mock.enqueue(json_scene(CHAT_JSON))
        self.assertEqual(self.post("/v1/chat/completions", CHAT_REQ).status, 200)

    def test_sighup_counts_one_reload(self):
        self.check_reloads(workers=1)

    def test_sighup_counts_one_reload_with_two_workers(self):
        self.check_reloads(workers=2)

    def test_sighup_at_startup_is_a_reload_not_a_kill(self):
        # A SIGHUP sent as soon as sluice accepts connections (a deploy
        # script that writes the config and reloads) must reload, not kill
        # it with the default signal action. Eight workers: the first one
        # listens while the others are still starting.
        d = tempfile.mkdtemp(prefix="sluice-metrics-")
        self.addCleanup(shutil.rmtree, d, True)
        s = harness.Sluice(harness.sluice_config(
            self.mock.port, extra='  history = { path = "%s/history.db" },\n' % d), workers=8, wait=False)
        self.addCleanup(s.cleanup)
        self.sluice = s

        def accepting():
            try:
                socket.create_connection((harness.HOST, s.port), timeout=1).close()
                return True
            except OSError:
                return s.proc.poll() is not None
        self.assertTrue(harness.wait_for(accepting, timeout=10, interval=0.001))
        s.reload()
        time.sleep(0.5)
        self.assertIsNone(s.proc.poll(), "sluice died of an early SIGHUP (exit %r)%s"
                          % (s.proc.returncode, self.diag()))
        self.assertTrue(s.wait_healthy(), self.diag())
        self.assertTrue(harness.wait_for(
            lambda: self.value(self.scrape(), "sluice_reloads_total", result="ok") >= 1, timeout=5),
            "the early SIGHUP was not acted on")


class GaugeTest(MetricsCase):
    def test_active_stream_and_connections(self):
        self.start()
        # The admin connection doing the scrape is itself open while it scrapes.
        self.assertTrue(harness.wait_for(
            lambda: self.value(self.scrape(), "sluice_active_connections") == 1, timeout=3),
            "idle: only the scraping connection should be open: %r" % self.value(
                self.scrape(), "sluice_active_connections"))
        self.assertEqual(self.value(self.scrape(), "sluice_active_streams"), 0)

        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": FIRST_CHUNK}], "stall_ms": 30000})
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(build_request("POST", "/v1/chat/completions", json.dumps(dict(CHAT_REQ, stream=True)),
                             {"Content-Type": "application/json"}, self.sluice.port))
        c.read_until(b'"role": "assistant"', timeout=5)
        during = self.scrape()
        self.assertEqual(self.value(during, "sluice_active_streams"), 1)
        self.assertEqual(self.value(during, "sluice_active_connections"), 2)

        c.close()
        self.assertTrue(harness.wait_for(
            lambda: self.value(self.scrape(), "sluice_active_streams") == 0, timeout=3),
            "stream gauge did not fall back")
        self.assertTrue(harness.wait_for(
            lambda: self.value(self.scrape(), "sluice_active_connections") == 1, timeout=3),
            "connection gauge did not fall back")
        after = self.scrape()
        self.assertEqual(self.value(after, "sluice_outcomes_total", reason="CLIENT_ABORT", partial="true"), 1)


class UpstreamPoolTest(MetricsCase):
    """/_sluice/health's `upstream`: each worker's connections to upstreams
    (open, idle in curl's cache), transfers in flight and paused, pooled curl
    handles, connections opened since start — and their sums."""

    FIELDS = ("transfers", "paused", "connections", "idle", "handles_pooled", "connects_total")

    def health_upstream(self):
        r = harness.request(self.sluice.port, "GET", "/_sluice/health")
        self.assertEqual(r.status, 200, r)
        up = r.json()["upstream"]
        for f in self.FIELDS:  # each figure is the sum of the workers' own
            self.assertEqual(sum(w[f] for w in up["workers"]), up[f], up)
        return up

    def test_figures_follow_connections_and_transfers(self):
        self.start(workers=2)
        up = self.health_upstream()
        self.assertEqual([w["worker"] for w in up["workers"]], [1, 2])
        for f in self.FIELDS:
            self.assertEqual(up[f], 0, up)  # nothing sent upstream yet

        # Sequential answers on one client connection (one worker): one
        # upstream connection, reused, left idle in the pool.
        self.mock.enqueue(json_scene(CHAT_JSON, repeat=3))
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        for _ in range(3):
            c.send(build_request("POST", "/v1/chat/completions", json.dumps(CHAT_REQ),
                                 {"Content-Type": "application/json"}, self.sluice.port))
            self.assertEqual(c.read_response().status, 200)
        # The client has each answer before its exchange hands the transfer
        # back (the record and the pool come after the answer), so the
        # figures settle a moment after the last response.
        def figures():
            u = self.health_upstream()
            return (u["transfers"], u["connections"], u["idle"], u["connects_total"], u["handles_pooled"])
        # (no curl handle: the mock is plain http://, served by the lean client)
        harness.wait_for(lambda: figures() == (0, 1, 1, 1, 0), timeout=3)
        up = self.health_upstream()
        self.assertEqual((up["transfers"], up["connections"], up["idle"], up["connects_total"],
                          up["handles_pooled"]), (0, 1, 1, 1, 0), up)
        busy = [w for w in up["workers"] if w["connections"]]
        self.assertEqual(len(busy), 1, up)

        # A stream in flight on that worker's connection: in use, not idle.
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": FIRST_CHUNK}], "stall_ms": 30000})
        c.send(build_request("POST", "/v1/chat/completions", json.dumps(dict(CHAT_REQ, stream=True)),
                             {"Content-Type": "application/json"}, self.sluice.port))
        c.read_until(b'"role": "assistant"', timeout=5)
        up = self.health_upstream()
        self.assertEqual((up["transfers"], up["connections"], up["idle"], up["connects_total"],
                          up["handles_pooled"]), (1, 1, 0, 1, 0), up)

        # The client leaves mid-stream: the transfer is cut and its upstream
        # connection closed (an answer half read cannot be reused).
        c.close()
        self.assertTrue(harness.wait_for(lambda: self.health_upstream()["transfers"] == 0, timeout=3),
                        "the cut transfer is still counted: %r" % self.health_upstream())
        up = self.health_upstream()
        self.assertEqual((up["connections"], up["idle"], up["connects_total"]), (0, 0, 1), up)


class ParserTest(harness.unittest.TestCase):
    """The strict parser above must itself reject what is not exposition text,
    or the tests that rely on it prove nothing."""

    GOOD = ('# HELP a_total A.\n# TYPE a_total counter\na_total{x="1",y="q\\"z"} 3\n'
            '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 0.5\nh_count 2\n')

    def test_accepts_valid_text(self):
        types, samples = parse_prometheus(self.GOOD)
        self.assertEqual(types, {"a_total": "counter", "h": "histogram"})
        self.assertEqual(samples[("a_total", frozenset({("x", "1"), ("y", 'q"z')}))], 3)

    def test_rejects_invalid_text(self):
        bad = [
            "a_total 1\n",                                                  # undeclared
            "# TYPE a counter\na{x=1} 1\n",                                 # unquoted label
            "# TYPE a counter\na 1\na 2\n",                                 # duplicate series
            "# TYPE a counter\na one\n",                                    # bad value
            "# TYPE a counter\na 1",                                        # no final newline
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",  # no +Inf
            "# TYPE a wibble\na 1\n",
        ]
        for text in bad:
            with self.subTest(text=text):
                with self.assertRaises(ParseError):
                    parse_prometheus(text)


if __name__ == "__main__":
    harness.main()
