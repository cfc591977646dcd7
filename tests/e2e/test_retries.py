"""Retries, fallbacks and request ids (issue 5), through the real binary and
the scripted mock upstream, which counts what it receives.

Retries happen only before anything reached the client; a supplier never
gets the request more than `attempts` times; Retry-After is honoured; a
fallback supplier of another protocol answers through translation; a client
that leaves during a backoff wait stops the retries."""
import json
import os
import socket
import tempfile
import time

import harness
from harness import SluiceTestCase

OPENAI_OK = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                          "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
CHAT_REQ = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE_REQ = {"model": "claude-sonnet-4-5", "max_tokens": 64,
              "messages": [{"role": "user", "content": "hi"}]}


def blackhole_port():
    """A loopback port whose accept queue is full: connecting to it hangs
    (the kernel drops the SYNs) until the client's connect timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    held = [srv]
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        held.append(c)
    time.sleep(0.2)
    return port, held


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RetryTest(SluiceTestCase):
    def start(self, retry="{ attempts = 3, base = 0.05, max = 2 }", routes=None, suppliers_extra=""):
        self.db = os.path.join(tempfile.mkdtemp(), "history.db")
        extra = 'retry = %s,\n  history = { path = "%s" },\n' % (retry, self.db)
        return self.start_sluice(extra=extra, routes=routes, suppliers_extra=suppliers_extra)

    def record(self, rid):
        r = harness.request(self.sluice.port, "GET", "/_sluice/requests/" + rid)
        self.assertEqual(r.status, 200, r)
        return r.json()

    def chat(self, rid, body=CHAT_REQ):
        return self.post("/v1/chat/completions", json.dumps(body),
                         {"content-type": "application/json", "x-request-id": rid})

    def test_503_503_200_is_answered_and_recorded_as_three_attempts(self):
        self.start()
        err = {"status": 503, "headers": {"content-type": "application/json"},
               "body": json.dumps({"error": {"message": "busy"}})}
        self.mock.enqueue([err, err, {"status": 200, "headers": {"content-type": "application/json"},
                                      "body": json.dumps(OPENAI_OK)}])
        r = self.chat("retry-three")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["choices"][0]["message"]["content"], "hello")
        self.assertEqual(len(self.mock.requests()), 3)
        rec = self.record("retry-three")
        self.assertEqual(rec["attempts"], 3)
        self.assertEqual([a["status"] for a in rec["attempt_log"]], [503, 503, 200])
        self.assertEqual(rec["reason"], "COMPLETE")

    def test_retry_after_is_honoured(self):
        self.start()
        self.mock.enqueue([
            {"status": 429, "headers": {"retry-after": "1", "content-type": "application/json"},
             "body": "{\"error\":{\"message\":\"slow down\"}}"},
            {"status": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(OPENAI_OK)},
        ])
        r = self.chat("retry-after")
        self.assertEqual(r.status, 200, r)
        reqs = self.mock.requests()
        self.assertEqual(len(reqs), 2)
        self.assertGreaterEqual(reqs[1]["time"] - reqs[0]["time"], 1.0)

    def test_all_attempts_fail_gives_the_last_upstream_error_in_client_shape(self):
        self.start()
        for msg in ("first", "second", "third and last"):
            self.mock.enqueue([{"status": 503, "headers": {"content-type": "application/json"},
                                "body": json.dumps({"error": {"message": msg, "type": "server_error"}})}])
        r = self.chat("retry-exhausted")
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.json()["error"]["message"], "third and last")
        self.assertEqual(len(self.mock.requests()), 3, "never more than `attempts` sends")

    def test_statuses_outside_the_policy_are_not_retried(self):
        self.start()
        self.mock.enqueue([{"status": 400, "headers": {"content-type": "application/json"},
                            "body": "{\"error\":{\"message\":\"bad\"}}"}])
        r = self.chat("no-retry-400")
        self.assertEqual(r.status, 400)
        self.assertEqual(len(self.mock.requests()), 1)

    def test_refused_connection_falls_back_with_translation(self):
        dead = closed_port()
        extra = '    dead = { protocol = "anthropic", base_url = "http://127.0.0.1:%d", auth = { type = "none" } },\n' % dead
        routes = """{ claude = { { match = "*", supplier = { "dead", "oa" } } },
                      chat = { { match = "*", supplier = "oa" } } }"""
        self.start(routes=routes, suppliers_extra=extra)
        self.mock.enqueue([{"status": 200, "headers": {"content-type": "application/json"},
                            "body": json.dumps(OPENAI_OK)}])
        r = self.post("/v1/messages", json.dumps(CLAUDE_REQ),
                      {"content-type": "application/json", "x-request-id": "fallback-1",
                       "anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 200, r)
        body = r.json()
        self.assertEqual(body["type"], "message")
        self.assertEqual(body["content"][0]["text"], "hello")
        self.assertEqual(body["model"], "claude-sonnet-4-5")
        reqs = self.mock.requests()
        self.assertEqual(len(reqs), 1)
        self.assertEqual(reqs[0]["path"], "/v1/chat/completions")
        rec = self.record("fallback-1")
        self.assertEqual([a["supplier"] for a in rec["attempt_log"]], ["dead", "dead", "dead", "oa"])
        self.assertEqual(rec["supplier"], "oa")

    def test_connect_timeout_is_retried_then_falls_back(self):
        port, held = blackhole_port()
        self.addCleanup(lambda: [h.close() for h in held])
        extra = ('    slow = { protocol = "openai-chat", base_url = "http://127.0.0.1:%d/v1", '
                 'auth = { type = "none" }, timeouts = { connect = 0.5 }, retry = { attempts = 2, base = 0 } },\n' % port)
        routes = '{ chat = { { match = "*", supplier = { "slow", "oa" } } } }'
        self.start(routes=routes, suppliers_extra=extra)
        self.mock.enqueue([{"status": 200, "headers": {"content-type": "application/json"},
                            "body": json.dumps(OPENAI_OK)}])
        r = self.chat("connect-timeout")
        self.assertEqual(r.status, 200, r)
        rec = self.record("connect-timeout")
        self.assertEqual([(a["supplier"], a["error"]) for a in rec["attempt_log"]],
                         [("slow", "UPSTREAM_TIMEOUT_CONNECT"), ("slow", "UPSTREAM_TIMEOUT_CONNECT"),
                          ("oa", None)])

    def test_no_retry_after_the_first_streamed_byte(self):
        self.start()
        self.mock.enqueue([{"status": 200, "headers": {"content-type": "text/event-stream"},
                            "chunks": [{"data": 'data: {"id":"c","choices":[{"index":0,"delta":{"content":"par"}}]}\n\n'}],
                            "close_after": True}])
        body = dict(CHAT_REQ, stream=True)
        r = self.post("/v1/chat/completions", json.dumps(body),
                      {"content-type": "application/json", "x-request-id": "stream-cut"})
        self.assertEqual(r.status, 200)
        self.assertIn(b"par", r.body)
        self.assertIn(b"data: [DONE]", r.body)
        self.assertEqual(len(self.mock.requests()), 1, "a committed stream is never replayed")
        rec = self.record("stream-cut")
        self.assertTrue(rec["partial"])
        self.assertEqual(rec["attempts"], 1)

    def test_client_leaving_during_backoff_stops_retries(self):
        self.start(retry="{ attempts = 3, base = 0.05, max = 5 }")
        self.mock.enqueue([{"status": 503, "headers": {"retry-after": "3"}, "body": "{}", "repeat": 3}])
        conn = harness.RawConn(self.sluice.port)
        body = json.dumps(CHAT_REQ).encode()
        conn.send(harness.build_request("POST", "/v1/chat/completions", body,
                                        {"content-type": "application/json"}, port=self.sluice.port))
        self.assertTrue(harness.wait_for(lambda: len(self.mock.requests()) == 1, timeout=5))
        time.sleep(0.3)
        conn.close()
        time.sleep(3.5)
        self.assertEqual(len(self.mock.requests()), 1, "no attempt after the client left")

    def test_request_id_kept_forwarded_and_returned(self):
        self.start()
        self.mock.enqueue([{"status": 200, "headers": {"content-type": "application/json"},
                            "body": json.dumps(OPENAI_OK)}])
        r = self.chat("client-chosen-id-42")
        self.assertEqual(r.header("x-request-id"), "client-chosen-id-42")
        self.assertEqual(harness.header_values(self.mock.requests()[0], "x-request-id"), ["client-chosen-id-42"])
        self.assertEqual(self.record("client-chosen-id-42")["id"], "client-chosen-id-42")

    def test_invalid_request_id_is_replaced(self):
        self.start()
        self.mock.enqueue([{"status": 200, "headers": {"content-type": "application/json"},
                            "body": json.dumps(OPENAI_OK)}])
        r = self.chat("x" * 300)
        rid = r.header("x-request-id")
        self.assertTrue(rid and rid.startswith("req_") and len(rid) < 64, rid)
        self.assertEqual(harness.header_values(self.mock.requests()[0], "x-request-id"), [rid])


if __name__ == "__main__":
    harness.main()
