"""test_core_limits — what sluice does at its edges: bad input, big input, slow upstreams.

A gateway in front of coding agents sees malformed requests, oversized
bodies and upstreams that never answer. Here each of those gets the answer a
client can act on, in the client's own protocol shape, without the request
ever reaching the supplier when it should not, and without hurting the next
request. Also the two endpoints every deployment probes first: health and an
unknown path.
"""

import json
import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import RawConn, build_request, request  # noqa: E402

SMALL_LIMITS = "{ max_body = 4096, max_header = 8 * 1024, header_timeout = 10, keepalive_timeout = 60 }"

ANTHROPIC_MSG = '{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"%s"}]}'
CHAT_MSG = '{"model":"gpt-4.1","messages":[{"role":"user","content":"%s"}]}'


def assert_anthropic_error(tc, resp):
    body = resp.json()
    tc.assertEqual(body.get("type"), "error", body)
    tc.assertIsInstance(body["error"]["type"], str)
    tc.assertTrue(body["error"]["message"], body)


def assert_openai_error(tc, resp):
    body = resp.json()
    tc.assertIsInstance(body.get("error"), dict, body)
    tc.assertTrue(body["error"]["message"], body)
    tc.assertIsInstance(body["error"]["type"], str)
    tc.assertIn("code", body["error"])


def assert_gemini_error(tc, resp, code):
    body = resp.json()
    tc.assertEqual(body["error"]["code"], code, body)
    tc.assertTrue(body["error"]["message"], body)
    tc.assertIsInstance(body["error"]["status"], str)


class BasicsTest(harness.SluiceTestCase):
    def test_health(self):
        s = self.start_sluice(workers=2)
        r = request(s.port, "GET", "/_sluice/health")
        self.assertEqual(r.status, 200)
        self.assertTrue((r.header("content-type") or "").startswith("application/json"))
        body = r.json()
        self.assertEqual(body["status"], "ok")
        self.assertEqual(body["workers"], 2)
        self.assertTrue(body["version"])
        # each worker's upstream pool, and the sums (test_metrics has them move)
        self.assertEqual([w["worker"] for w in body["upstream"]["workers"]], [1, 2])
        self.assertEqual(body["upstream"]["connections"], 0)
        self.assertEqual(self.mock.requests(), [], "health must not touch the upstream")

    def test_unknown_path_is_404_json(self):
        s = self.start_sluice()
        for method, path in (("GET", "/nope"), ("POST", "/v2/messages"), ("GET", "/v1/messages/extra/x")):
            with self.subTest(path=path):
                r = request(s.port, method, path, body="{}" if method == "POST" else None)
                self.assertEqual(r.status, 404, r)
                self.assertIsInstance(r.json(), dict)
        self.assertEqual(self.mock.requests(), [])


class MalformedTest(harness.SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.start_sluice()

    def assert_400_and_close(self, data):
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(data)
        resp = c.read_response(timeout=5)
        self.assertEqual(resp.status, 400, "%r%s" % (resp, self.diag()))
        self.assertTrue(c.is_closed_by_peer(3), "connection left open after a malformed request")
        return resp

    def test_garbage_request_line(self):
        self.assert_400_and_close(b"HELLO THERE\r\n\r\n")

    def test_bad_header_name(self):
        self.assert_400_and_close(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n"
                                  b"Content-Length: 2\r\n\r\n{}")

    def test_content_length_and_chunked_together(self):
        # The classic request-smuggling shape: strict parsing refuses it.
        self.assert_400_and_close(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"0\r\n\r\n")

    def test_malformed_after_a_good_request_on_same_connection(self):
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(build_request("GET", "/_sluice/health", port=self.sluice.port))
        self.assertEqual(c.read_response().status, 200)
        c.send(b"GET / HTTP/1.1\r\nHost x\r\n\r\n")
        self.assertEqual(c.read_response().status, 400)
        self.assertTrue(c.is_closed_by_peer(3))

    def test_nothing_reaches_upstream_and_next_request_works(self):
        for data in (b"\x00\x01\x02\r\n\r\n", b"POST /v1/messages HTTP/9.9\r\n\r\n"):
            self.assert_400_and_close(data)
        self.assertEqual(self.mock.requests(), [])
        self.mock.enqueue({"body": '{"ok":1}'})
        r = request(self.sluice.port, "POST", "/v1/chat/completions", body=CHAT_MSG % "hi")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b'{"ok":1}')


class SizeLimitTest(harness.SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.start_sluice(limits=SMALL_LIMITS)

    def test_oversized_body_messages_is_413_anthropic_shape(self):
        r = request(self.sluice.port, "POST", "/v1/messages", body=ANTHROPIC_MSG % ("x" * 10000),
                    headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 413, "%r%s" % (r, self.diag()))
        assert_anthropic_error(self, r)
        self.assertEqual(self.mock.requests(), [])

    def test_oversized_body_chat_is_413_openai_shape(self):
        r = request(self.sluice.port, "POST", "/v1/chat/completions", body=CHAT_MSG % ("x" * 10000),
                    headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 413, "%r%s" % (r, self.diag()))
        assert_openai_error(self, r)
        self.assertEqual(self.mock.requests(), [])

    def test_oversized_body_gemini_is_413_gemini_shape(self):
        r = request(self.sluice.port, "POST", "/v1beta/models/gemini-2.5-flash:generateContent",
                    body='{"contents":[{"parts":[{"text":"%s"}]}]}' % ("x" * 10000))
        self.assertEqual(r.status, 413, "%r%s" % (r, self.diag()))
        assert_gemini_error(self, r, 413)

    def test_oversized_chunked_body_is_413(self):
        # No Content-Length to check up front: the limit must hold while streaming in.
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 1000
        try:
            for _ in range(10):
                c.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            c.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # sluice may answer and close before we finish sending
        resp = c.read_response(timeout=5)
        self.assertEqual(resp.status, 413, "%r%s" % (resp, self.diag()))
        self.assertTrue(json.loads(resp.body)["error"]["message"])
        self.assertEqual(self.mock.requests(), [])

    def test_announced_oversized_body_rejected_without_sending_it(self):
        # A client that announces 10 MB gets its 413 at once instead of
        # uploading 10 MB first.
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"anthropic-version: 2023-06-01\r\nContent-Length: 10000000\r\n\r\n{")
        resp = c.read_response(timeout=5)
        self.assertEqual(resp.status, 413, "%r%s" % (resp, self.diag()))
        self.assertEqual(json.loads(resp.body)["type"], "error")

    def test_body_at_the_limit_is_accepted(self):
        body = CHAT_MSG % ("y" * (4096 - len(CHAT_MSG % "")))
        self.assertEqual(len(body), 4096)
        r = request(self.sluice.port, "POST", "/v1/chat/completions", body=body)
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(self.only_request()["body"], body)

    def test_oversized_headers_rejected_and_closed(self):
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        try:
            c.send(b"GET /_sluice/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = c.read_response(timeout=5)
        self.assertIn(resp.status, (400, 431), resp)
        self.assertTrue(c.is_closed_by_peer(3))


class ConnectionTimeoutTest(harness.SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.start_sluice(limits="{ max_body = 1024 * 1024, max_header = 64 * 1024, "
                                 "header_timeout = 1, keepalive_timeout = 1 }")

    def test_slow_headers_are_cut_off(self):
        # Slowloris: headers trickling in forever must not hold a connection.
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 6:
            try:
                c.send(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
            if c.is_closed_by_peer(0.3):
                closed = True
                break
        self.assertTrue(closed, "connection still open 6 s into its headers with header_timeout = 1")
        self.assertEqual(self.mock.requests(), [])

    def test_idle_keepalive_connection_is_closed(self):
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(build_request("GET", "/_sluice/health", port=self.sluice.port))
        self.assertEqual(c.read_response().status, 200)
        self.assertTrue(c.is_closed_by_peer(5), "idle connection kept past keepalive_timeout = 1")

    def test_active_connection_is_not_cut_by_keepalive_timeout(self):
        # The keep-alive timer counts idle time only, not a slow response.
        self.mock.enqueue({"delay_ms": 2500, "body": '{"slow":true}'})
        r = request(self.sluice.port, "POST", "/v1/chat/completions", body=CHAT_MSG % "hi")
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(r.body, b'{"slow":true}')


class PipelineTest(harness.SluiceTestCase):
    def test_pipelined_requests_answered_in_order(self):
        self.start_sluice()
        self.mock.enqueue([{"delay_ms": 300, "body": '{"n":1}'}, {"body": '{"n":2}'}])
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        req = lambda: build_request("POST", "/v1/chat/completions", CHAT_MSG % "hi",
                                    {"Content-Type": "application/json"}, self.sluice.port)
        c.send(req() + req() + build_request("GET", "/_sluice/health", port=self.sluice.port))
        self.assertEqual(c.read_response().body, b'{"n":1}')
        self.assertEqual(c.read_response().body, b'{"n":2}')
        self.assertEqual(c.read_response().status, 200)

    def test_chunked_client_body_forwarded_intact(self):
        self.start_sluice()
        body = (CHAT_MSG % ("caf\u00e9 " * 300)).encode()
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 700):
            part = body[i:i + 700]
            c.send(b"%x\r\n%s\r\n" % (len(part), part))
        c.send(b"0\r\n\r\n")
        self.assertEqual(c.read_response().status, 200)
        self.assertEqual(self.only_request()["body_bytes"], body)


class TimeoutTest(harness.SluiceTestCase):
    def test_client_leaving_before_first_byte_aborts_upstream(self):
        self.start_sluice()
        self.mock.enqueue({"delay_ms": 8000, "body": "{}"})
        c = RawConn(self.sluice.port)
        c.send(build_request("POST", "/v1/chat/completions", CHAT_MSG % "hi",
                             {"Content-Type": "application/json"}, self.sluice.port))
        harness.wait_for(lambda: len(self.mock.requests()) == 1, 5)
        c.close()
        gone = harness.wait_for(lambda: self.mock.requests()[0]["client_gone"], 3)
        self.assertTrue(gone, "upstream request kept waiting after the client left" + self.diag())
        self.assertEqual(len(self.mock.requests()), 1, "sluice retried for a client that had left")

    def test_first_byte_timeout_is_504_and_upstream_abandoned(self):
        self.start_sluice(timeouts="{ connect = 5, first_byte = 1, idle = 30, total = 60 }")
        # Every attempt stalls: sluice may retry first-byte timeouts (DESIGN §7),
        # so the scene repeats for all of them.
        self.mock.enqueue({"delay_ms": 6000, "body": '{"too":"late"}', "repeat": 10})
        t0 = time.monotonic()
        r = request(self.sluice.port, "POST", "/v1/chat/completions", body=CHAT_MSG % "hi")
        elapsed = time.monotonic() - t0
        self.assertEqual(r.status, 504, "%r%s" % (r, self.diag()))
        assert_openai_error(self, r)
        attempts = len(self.mock.requests())
        # first_byte = 1 per attempt plus backoff, far below the 120 s default.
        self.assertLess(elapsed, attempts * 1.0 + 10, "504 only after %.1f s" % elapsed)
        gone = harness.wait_for(lambda: all(q["client_gone"] for q in self.mock.requests()), 3)
        self.assertTrue(gone, "sluice kept waiting on the upstream after its 504")

    def test_supplier_timeouts_override_global(self):
        extra = ('    slow = { protocol = "anthropic", base_url = "http://127.0.0.1:%d", '
                 'auth = { type = "none" }, timeouts = { first_byte = 1 } },\n' % self.mock.port)
        self.start_sluice(suppliers_extra=extra,
                          routes='{ claude = { { match = "*", supplier = "slow" } } }')
        self.mock.enqueue({"delay_ms": 6000, "body": "{}", "repeat": 10})
        r = request(self.sluice.port, "POST", "/v1/messages", body=ANTHROPIC_MSG % "hi",
                    headers={"anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 504, "%r%s" % (r, self.diag()))
        assert_anthropic_error(self, r)


if __name__ == "__main__":
    harness.main()
