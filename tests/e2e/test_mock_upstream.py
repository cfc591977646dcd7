"""test_mock_upstream — the scripted mock upstream does what the e2e tests rely on.

Every other e2e test trusts the mock to send exactly the scripted bytes, at
the scripted times, to end the exchange the scripted way, and to record and
count what it saw. These tests hold it to that, talking to it directly with
http.client and raw sockets (no sluice involved).
"""

import http.client
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import HOST, RawConn, build_request, request  # noqa: E402


class MockUpstreamTest(unittest.TestCase):
    def setUp(self):
        self.mock = harness.start_mock()
        self.addCleanup(self.mock.stop)
        self.port = self.mock.port

    def test_default_answer_and_exact_recording(self):
        body = '{"model":"x","messages":[{"role":"user","content":"h\u00e9"}]}'
        r = request(self.port, "POST", "/v1/chat/completions?a=1&b=2", body=body,
                    headers={"Content-Type": "application/json", "X-Custom": "Value 1"})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"mock": "default", "path": "/v1/chat/completions?a=1&b=2"})
        reqs = self.mock.requests()
        self.assertEqual(len(reqs), 1)
        rec = reqs[0]
        self.assertEqual(rec["seq"], 1)
        self.assertEqual(rec["method"], "POST")
        self.assertEqual(rec["path"], "/v1/chat/completions?a=1&b=2")
        self.assertEqual(rec["body"], body)
        self.assertIn(["X-Custom", "Value 1"], rec["headers"])
        self.assertFalse(rec["client_gone"])

    def test_scene_status_headers_body(self):
        self.mock.enqueue({"status": 529, "headers": {"X-Up": "yes", "Content-Type": "application/json"},
                           "body": '{"type":"error"}'})
        r = request(self.port, "POST", "/v1/messages", body="{}")
        self.assertEqual(r.status, 529)
        self.assertEqual(r.header("x-up"), "yes")
        self.assertEqual(r.body, b'{"type":"error"}')
        # The queue is consumed: the next request gets the default.
        self.assertEqual(request(self.port, "GET", "/x").json()["mock"], "default")

    def test_path_prefix_and_repeat(self):
        self.mock.enqueue([{"path": "/b", "body": "B", "repeat": 2}, {"body": "ANY"}])
        self.assertEqual(request(self.port, "GET", "/a").body, b"ANY")
        self.assertEqual(request(self.port, "GET", "/b/1").body, b"B")
        self.assertEqual(request(self.port, "GET", "/b/2").body, b"B")
        self.assertEqual(request(self.port, "GET", "/b/3").json()["mock"], "default")
        self.assertEqual(self.mock.pending(), 0)

    def test_keepalive_and_stats_exclude_control(self):
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        for i in range(3):
            conn.request("POST", "/k%d" % i, body=b"x" * i)
            resp = conn.getresponse()
            resp.read()
            self.assertEqual(resp.status, 200)
        reqs = self.mock.requests()
        self.assertEqual(len({r["conn_id"] for r in reqs}), 1)
        self.assertEqual(self.mock.stats(), {"connections_opened": 1, "connections_closed": 0, "open": 1})
        conn.close()
        harness.wait_for(lambda: self.mock.stats()["connections_closed"] == 1, 5)
        self.assertEqual(self.mock.stats(), {"connections_opened": 1, "connections_closed": 1, "open": 0})

    def test_chunked_request_body(self):
        c = RawConn(self.port)
        c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n")
        resp = c.read_response()
        c.close()
        self.assertEqual(resp.status, 200)
        self.assertEqual(self.mock.requests()[0]["body"], "hello, world")

    def test_expect_100_continue(self):
        c = RawConn(self.port)
        c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        self.assertEqual(c.read_until(b"\r\n\r\n", timeout=5), b"HTTP/1.1 100 Continue\r\n\r\n")
        c.send(b"abc")
        self.assertEqual(c.read_response().status, 200)
        c.close()
        self.assertEqual(self.mock.requests()[0]["body"], "abc")

    def test_binary_body_is_base64(self):
        request(self.port, "POST", "/bin", body=b"\xff\x00\xfe")
        rec = self.mock.requests()[0]
        self.assertTrue(rec["body_base64"])
        self.assertEqual(rec["body_bytes"], b"\xff\x00\xfe")

    def test_chunks_are_flushed_one_by_one(self):
        self.mock.enqueue({"chunks": [{"data": "data: one\n\n"},
                                      {"data": "data: two\n\n", "delay_ms": 800}]})
        c = RawConn(self.port)
        c.send(build_request("POST", "/s", "{}"))
        c.read_until(b"data: one\n\n", timeout=5)
        # The second chunk is 800 ms away; it must not be glued to the first.
        self.assertNotIn(b"two", c.buf)
        c.read_until(b"data: two\n\n", timeout=5)
        c.read_until(b"0\r\n\r\n", timeout=5)
        c.close()

    def test_chunked_response_decodes(self):
        text = "event: a\ndata: {\"x\":1}\n\nevent: b\ndata: {\"y\":2}\n\n"
        self.mock.enqueue({"headers": {"X-Stream": "1"}, "chunks": harness.sse_chunks(text)})
        r = request(self.port, "POST", "/s", body="{}")
        self.assertEqual(r.header("content-type"), "text/event-stream")
        self.assertEqual(r.body.decode(), text)
        self.assertEqual([e["event"] for e in harness.parse_sse(r.body)], ["a", "b"])

    def test_byte_split_chunks_reassemble(self):
        text = "data: {\"t\":\"\u2603\u00e9\u2603\"}\n\n" * 3
        chunks = harness.sse_chunks(text, parts=13)
        self.assertGreater(len(chunks), 5)
        self.mock.enqueue({"chunks": chunks})
        r = request(self.port, "POST", "/s", body="{}")
        self.assertEqual(r.body, text.encode("utf-8"))

    def test_delay_before_status(self):
        self.mock.enqueue({"delay_ms": 600, "body": "late"})
        t0 = time.monotonic()
        r = request(self.port, "GET", "/d")
        self.assertEqual(r.body, b"late")
        self.assertGreaterEqual(time.monotonic() - t0, 0.55)

    def test_close_after_sends_no_terminator(self):
        self.mock.enqueue({"chunks": [{"data": "data: partial\n\n"}], "close_after": True})
        c = RawConn(self.port)
        c.send(build_request("POST", "/s", "{}"))
        data = c.read_to_close(timeout=5)
        c.close()
        self.assertIn(b"data: partial", data)
        self.assertNotIn(b"0\r\n\r\n", data)
        self.assertFalse(c.was_reset)

    def test_reset_sends_rst_after_chunks(self):
        self.mock.enqueue({"chunks": [{"data": "data: before-reset\n\n"}], "reset": True})
        c = RawConn(self.port)
        c.send(build_request("POST", "/s", "{}"))
        data = c.read_to_close(timeout=5)
        c.close()
        self.assertIn(b"before-reset", data)
        self.assertTrue(c.was_reset, "expected ECONNRESET, got a clean close")

    def test_stall_then_finish(self):
        self.mock.enqueue({"chunks": [{"data": "x"}], "stall_ms": 700})
        c = RawConn(self.port)
        c.send(build_request("POST", "/s", "{}"))
        c.read_until(b"x\r\n", timeout=5)
        t0 = time.monotonic()
        c.read_until(b"0\r\n\r\n", timeout=5)
        self.assertGreaterEqual(time.monotonic() - t0, 0.6)
        c.close()

    def test_drop_request(self):
        self.mock.enqueue({"drop_request": True})
        c = RawConn(self.port)
        c.send(build_request("POST", "/s", "{}"))
        self.assertEqual(c.read_to_close(timeout=5), b"")
        c.close()
        self.assertEqual(len(self.mock.requests()), 1)

    def test_client_gone_is_recorded_and_counted(self):
        self.mock.enqueue({"chunks": [{"data": "data: first\n\n"}] +
                           [{"data": "data: more\n\n", "delay_ms": 200}] * 50})
        c = RawConn(self.port)
        c.send(build_request("POST", "/s", "{}"))
        c.read_until(b"data: first", timeout=5)
        c.close()
        ok = harness.wait_for(lambda: self.mock.requests()[0]["client_gone"], 3)
        self.assertTrue(ok, "mock did not notice the client leaving mid-response")
        self.assertEqual(self.mock.stats()["open"], 0)
        self.assertEqual(self.mock.stats()["connections_closed"], 1)

    def test_completed_response_is_not_client_gone(self):
        self.mock.enqueue({"chunks": [{"data": "a"}, {"data": "b"}]})
        request(self.port, "POST", "/s", body="{}")
        harness.wait_for(lambda: self.mock.stats()["open"] == 0, 3)
        self.assertFalse(self.mock.requests()[0]["client_gone"])

    def test_reset_control_clears_everything(self):
        self.mock.enqueue([{"body": "1"}, {"body": "2"}])
        request(self.port, "GET", "/a")
        self.mock.reset()
        self.assertEqual(self.mock.requests(), [])
        self.assertEqual(self.mock.pending(), 0)
        self.assertEqual(self.mock.stats(), {"connections_opened": 0, "connections_closed": 0, "open": 0})

    def test_malformed_request_gets_400(self):
        c = RawConn(self.port)
        c.send(b"THIS IS NOT HTTP\r\n\r\n")
        resp = c.read_response()
        self.assertEqual(resp.status, 400)
        self.assertTrue(c.is_closed_by_peer())
        c.close()

    def test_bad_enqueue_is_rejected(self):
        r = request(self.port, "POST", "/_mock/enqueue", body="[1, 2]")
        self.assertEqual(r.status, 400)
        r = request(self.port, "POST", "/_mock/enqueue", body="not json")
        self.assertEqual(r.status, 400)


class HarnessRedisTest(unittest.TestCase):
    def test_redis_starts_answers_and_stops(self):
        r = harness.start_redis()
        self.addCleanup(r.stop)
        self.assertEqual(r.command("SET", "k", "v"), b"+OK\r\n")
        self.assertEqual(r.command("GET", "k"), b"$1\r\nv\r\n")
        r.stop()
        self.assertIsNone(r.command("PING"), "redis still answering after stop()")


class SSEParserTest(unittest.TestCase):
    def test_line_endings_comments_multiline(self):
        text = b": ping\r\nevent: a\r\ndata: 1\r\ndata: 2\r\n\r\ndata: x\rid: 7\r\rdata: cut"
        events = harness.parse_sse(text)
        self.assertEqual(events, [{"event": "a", "data": "1\n2", "id": None},
                                  {"event": None, "data": "x", "id": "7"}])

    def test_json_payloads(self):
        events = harness.parse_sse('data: {"a": [1]}\n\ndata: [DONE]\n\n')
        self.assertEqual(json.loads(events[0]["data"]), {"a": [1]})
        self.assertEqual(events[1]["data"], "[DONE]")


if __name__ == "__main__":
    harness.main()
