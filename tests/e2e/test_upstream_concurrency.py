"""Requests to one supplier never wait on each other (issue 8 item 11).

On a fresh sluice process, a first request whose upstream is slow (to send
its first byte, or to finish its stream) must not hold back the requests
sent after it to the same host:port: they are answered while the slow one is
still pending. Shown on plain HTTP against the scripted mock, and on TLS with
HTTP/2 against a real nginx (proxying to the mock, which plays the delays).

Over TLS, HTTP/2 multiplexing keeps working: every request goes out as
HTTP/2, concurrent requests to a supplier that already has an h2 connection
share it, and once sluice has learnt that a supplier speaks h2, a burst that
starts after nginx closed the idle connection waits for one new connection
and shares it rather than opening one per request.

The assertions are about order ("the fast ones finished while the slow one
was still pending"), with the slow upstream taking 3 s, not about tight
timings; the measured times are printed for the record.

When every transfer asked curl to wait for multiplexing (CURLOPT_PIPEWAIT),
the plain-HTTP cases failed: curl learns that an HTTP/1.1 connection will not
multiplex only from its first answer, and wakes the transfers parked behind
it only when one ends, so all of them finished after the slow one. Over TLS
curl learns it from the handshake (ALPN), so the TLS cases passed then too:
they are here to keep HTTP/2 working and TLS requests unblocked.
"""
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import sse_chunks  # noqa: E402

SLOW_MS = 3000

CHAT_SSE = """data: {"id":"chatcmpl-c","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}

data: {"id":"chatcmpl-c","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}

data: [DONE]

"""

CHAT_JSON = ('{"id":"chatcmpl-c","object":"chat.completion","created":1,"model":"gpt-4.1",'
             '"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},'
             '"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}')

# nginx's server block: everything to the mock, which plays the delays.
PROXY_TO_MOCK = """
        location / {
            proxy_pass http://127.0.0.1:%d;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_read_timeout 60s;
        }
"""


def chat_body(model, stream):
    return json.dumps({"model": model, "stream": stream,
                       "messages": [{"role": "user", "content": "hi"}]})


def stream_scene(path, delay_ms=0, gap_ms=0):
    """A chat stream from the mock: delay_ms before the head, gap_ms between records."""
    return {"path": path, "status": 200, "headers": {"Content-Type": "text/event-stream"},
            "delay_ms": delay_ms, "chunks": sse_chunks(CHAT_SSE, delay_ms=gap_ms)}


def json_scene(path, delay_ms=0, repeat=1):
    return {"path": path, "status": 200, "headers": {"Content-Type": "application/json"},
            "body": CHAT_JSON, "delay_ms": delay_ms, "repeat": repeat}


class Timed(threading.Thread):
    """One client request on its own thread, with when it was sent, when the
    head came back and when the whole answer was in (monotonic seconds)."""

    def __init__(self, port, body):
        super().__init__(daemon=True)
        self.port, self.body = port, body
        self.sent = self.head_at = self.done_at = None
        self.resp = self.error = None

    def run(self):
        c = None
        try:
            c = harness.RawConn(self.port, timeout=60)
            self.sent = time.monotonic()
            c.send(harness.build_request("POST", "/v1/chat/completions", self.body,
                                         {"Content-Type": "application/json"}, self.port))
            head = c.read_until(b"\r\n\r\n", timeout=60)
            self.head_at = time.monotonic()
            c.buf = head + c.buf
            self.resp = c.read_response(timeout=60)
            self.done_at = time.monotonic()
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            if c:
                c.close()

    def pending(self):
        return self.done_at is None

    def check(self, case, want_stream):
        case.assertIsNone(self.error, "request failed: %r%s" % (self.error, case.diag()))
        case.assertEqual(self.resp.status, 200, "%r%s" % (self.resp, case.diag()))
        if want_stream:
            events = harness.parse_sse(self.resp.body)
            case.assertEqual(events[-1]["data"], "[DONE]", self.resp.body)
        else:
            case.assertEqual(self.resp.json()["choices"][0]["message"]["content"], "hi")


def burst(port, body, n):
    """n requests sent at once, each from its own thread; returns them once
    they ended (or 30 s each passed)."""
    timed = [Timed(port, body) for _ in range(n)]
    for t in timed:
        t.start()
    for t in timed:
        t.join(30)
    return timed


def ms(t0, t):
    return "%.0f ms" % ((t - t0) * 1000) if t is not None else "pending"


class ConcurrencyChecks:
    """The scenes, shared by the plain-HTTP and the TLS cases. Suppliers
    `slow` and `fast` live on the same host:port (only their paths differ),
    so a connection opened for one could be reused or waited on by the other."""

    def start(self):
        raise NotImplementedError

    def start_slow_fast(self, base, options=""):
        """sluice with the suppliers slow (models slow-*) and fast (the rest)
        at base/slow/v1 and base/fast/v1; options end each supplier's table."""
        extra = "".join('    %s = { protocol = "openai-chat", base_url = "%s/%s/v1", '
                        'auth = { type = "none" }%s },\n' % (name, base, name, options)
                        for name in ("slow", "fast"))
        routes = '{ chat = { { match = "slow-*", supplier = "slow" }, { match = "*", supplier = "fast" } } }'
        return self.start_sluice(suppliers_extra=extra, routes=routes)

    def wait_upstream_saw(self, prefix, t):
        ok = harness.wait_for(lambda: t.error or any(r["path"].startswith(prefix)
                                                     for r in self.mock.requests()), timeout=10)
        self.assertTrue(ok and not t.error, "the upstream never received %s (%r)%s"
                        % (prefix, t.error, self.diag()))

    def run_slow_then_fast(self, slow_scene, nfast, stream):
        """The slow request first (on a fresh process: it opens the first
        connection to the host), then nfast requests at once; returns them."""
        self.mock.enqueue([slow_scene] + [stream_scene("/fast") if stream else json_scene("/fast")
                                           for _ in range(nfast)])
        s = self.start()
        slow = Timed(s.port, chat_body("slow-gpt", stream))
        slow.start()
        self.wait_upstream_saw("/slow", slow)
        fast = burst(s.port, chat_body("gpt-4.1", stream), nfast)
        # Checked before joining the slow one: it must still be waiting.
        still_pending = slow.pending()
        slow.join(30)
        t0 = slow.sent
        report = "slow: head %s done %s; fast (sent %s): heads %s, done %s" % (
            ms(t0, slow.head_at), ms(t0, slow.done_at), ms(t0, min((f.sent for f in fast if f.sent), default=None)),
            ", ".join(ms(t0, f.head_at) for f in fast), ", ".join(ms(t0, f.done_at) for f in fast))
        print("\n    [%s] %s" % (self.id().split(".")[-1], report))
        slow.check(self, stream)
        for f in fast:
            f.check(self, stream)
        late = [f for f in fast if f.done_at > slow.done_at]
        self.assertEqual(len(late), 0, "%d of %d fast requests were held behind the slow one: %s%s"
                         % (len(late), nfast, report, self.diag()))
        self.assertTrue(still_pending, "the slow request ended before the fast ones: " + report)
        return slow, fast

    def test_second_request_not_held_behind_slow_first_byte(self):
        # The first upstream answer takes 3 s to send its head; the second
        # request, sent right after, is answered at once.
        self.run_slow_then_fast(json_scene("/slow", delay_ms=SLOW_MS), 1, stream=False)

    def test_many_streams_not_held_behind_slow_first_byte(self):
        self.run_slow_then_fast(stream_scene("/slow", delay_ms=SLOW_MS), 20, stream=True)

    def test_many_streams_not_held_behind_long_first_stream(self):
        # The first stream's head comes after 0.5 s (when the others have
        # been sent) and the stream then lasts 3 s more.
        self.run_slow_then_fast(stream_scene("/slow", delay_ms=SLOW_MS // 6, gap_ms=SLOW_MS // 3),
                                20, stream=True)


class PlainHttpTest(ConcurrencyChecks, harness.SluiceTestCase):
    def start(self):
        return self.start_slow_fast("http://127.0.0.1:%d" % self.mock.port)


def proxy_nginx(mock_port, keepalive="75s", http2=True):
    """nginx on a free port: TLS (+ HTTP/2 unless told not to) in front of the
    mock, logging each request's connection number, protocol, uri and status."""
    return harness.Nginx(PROXY_TO_MOCK % mock_port,
                         log_format="$connection $server_protocol $request_uri $status",
                         keepalive=keepalive, http2=http2)


def nginx_saw(case, nginx, count, protocol):
    """Checks that nginx logged count requests, all over protocol; returns
    them as [(connection number, protocol, uri, status)]."""
    time.sleep(0.2)
    lines = [tuple(line.split()) for line in nginx.access_lines() if line.strip()]
    case.assertEqual(len(lines), count, lines)
    case.assertEqual({line[1] for line in lines}, {protocol}, lines)
    return lines


class TlsH2Test(ConcurrencyChecks, harness.SluiceTestCase):
    http2 = True

    def setUp(self):
        super().setUp()
        self.nginx = proxy_nginx(self.mock.port, http2=self.http2)
        self.addCleanup(self.nginx.stop)

    def start(self):
        return self.start_slow_fast("https://127.0.0.1:%d" % self.nginx.port, ", verify_tls = false")

    def run_slow_then_fast(self, slow_scene, nfast, stream):
        slow, fast = super().run_slow_then_fast(slow_scene, nfast, stream)
        nginx_saw(self, self.nginx, nfast + 1, "HTTP/2.0" if self.http2 else "HTTP/1.1")
        return slow, fast

    def test_requests_after_the_first_share_its_h2_connection(self):
        # Once the first connection is up (its head already arrived), later
        # concurrent requests are multiplexed on it: one connection in all.
        self.mock.enqueue([stream_scene("/slow", gap_ms=SLOW_MS // 3)] +
                          [json_scene("/fast") for _ in range(10)])
        s = self.start()
        slow = Timed(s.port, chat_body("slow-gpt", True))
        slow.start()
        harness.wait_for(lambda: slow.head_at is not None, timeout=10)
        for f in burst(s.port, chat_body("gpt-4.1", False), 10):
            f.check(self, False)
        self.assertTrue(slow.pending(), "the slow stream should still be running")
        slow.join(30)
        slow.check(self, True)
        lines = nginx_saw(self, self.nginx, 11, "HTTP/2.0")
        self.assertEqual(len({line[0] for line in lines}), 1, "expected one h2 connection: %r" % lines)


class TlsHttp1Test(TlsH2Test):
    """A TLS supplier that offers only HTTP/1.1: nothing is multiplexed and
    nobody waits."""
    http2 = False
    test_requests_after_the_first_share_its_h2_connection = None


class TlsH2ReconnectTest(harness.SluiceTestCase):
    """nginx closes idle h2 connections after 1 s. sluice has learnt the
    supplier speaks h2, so a burst after that waits for one new connection
    and multiplexes on it instead of opening one per request."""

    def setUp(self):
        super().setUp()
        self.nginx = proxy_nginx(self.mock.port, keepalive="1s")
        self.addCleanup(self.nginx.stop)

    def test_known_h2_supplier_burst_shares_one_new_connection(self):
        base = "https://127.0.0.1:%d/v1" % self.nginx.port
        extra = ('    h2 = { protocol = "openai-chat", base_url = "%s", auth = { type = "none" }, verify_tls = false },\n'
                 % base)
        s = self.start_sluice(suppliers_extra=extra, routes='{ chat = { { match = "*", supplier = "h2" } } }')
        self.mock.enqueue(json_scene("/v1", repeat=21))
        first = Timed(s.port, chat_body("gpt-4.1", False))
        first.start()
        first.join(30)
        first.check(self, False)
        time.sleep(2.5)  # nginx closes the idle connection
        for b in burst(s.port, chat_body("gpt-4.1", False), 20):
            b.check(self, False)
        lines = nginx_saw(self, self.nginx, 21, "HTTP/2.0")
        conns = {line[0] for line in lines[1:]}
        self.assertNotIn(lines[0][0], conns, "the burst reused the closed connection?")
        self.assertEqual(len(conns), 1, "the burst opened %d connections: %r" % (len(conns), lines))


if __name__ == "__main__":
    harness.main()
