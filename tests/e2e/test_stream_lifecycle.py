"""test_stream_lifecycle — how a stream ends, seen by the client and by the history (issue 3).

For each of the four services on a passthrough route, the mock upstream
sends part of a stream and then fails in one of the ways real suppliers do:
it closes the connection without the protocol's terminal event, it resets
the TCP connection, or it goes silent past the idle timeout. The client
must still get a well-formed stream — the bytes the upstream sent, then the
protocol's own error ending (Anthropic `event: error` + `event: message_stop`,
OpenAI chat an error chunk + `data: [DONE]`, Responses `response.failed`,
Gemini an error object) and a proper end of the chunked body, never a hang —
and the history record must say partial=true with the reason. A complete
stream is COMPLETE and not partial.

Also: a translated stream (/v1/messages on an openai-chat supplier) cut after
a tool call started is closed by the Anthropic encoder (every open block
stopped, then error, then message_stop); failures before the first byte
become a proper HTTP error in the client's shape (first-byte timeout 504,
refused connection 502 naming the supplier); and a client that hangs up
mid-stream makes sluice drop the upstream at once, recorded as CLIENT_ABORT,
expected, partial.

Every read from sluice has a deadline, so a stream that never ends fails
the test instead of hanging it. Retries are switched off (`retry.attempts
= 1`) so each scene is played exactly once.
"""

import json
import os
import shutil
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import RawConn, build_request, chat_chunk, parse_sse, sse_record  # noqa: E402

CLIENT_KEY = "sk-client-key-lifecycle-5521"
READ_TIMEOUT = 8.0          # seconds: any stream still open after this is a hang

# ---------------------------------------------------------------- fixtures


ANTHROPIC_EVENTS = [
    sse_record("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    sse_record("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
    sse_record("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "Hello"}}),
    sse_record("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": " world"}}),
    sse_record("content_block_stop", {"type": "content_block_stop", "index": 0}),
    sse_record("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                 "usage": {"output_tokens": 5}}),
    sse_record("message_stop", {"type": "message_stop"}),
]


CHAT_EVENTS = [
    chat_chunk({"role": "assistant", "content": ""}),
    chat_chunk({"content": "Hello"}),
    chat_chunk({"content": " world"}),
    chat_chunk({}, finish="stop"),
    sse_record(None, "[DONE]"),
]

RESP_OBJ = {"id": "resp_1", "object": "response", "status": "in_progress", "output": [], "usage": None}
RESPONSES_EVENTS = [
    sse_record("response.created", {"type": "response.created", "sequence_number": 0, "response": RESP_OBJ}),
    sse_record("response.output_item.added", {"type": "response.output_item.added", "sequence_number": 1,
                                              "output_index": 0,
                                              "item": {"type": "message", "id": "msg_1", "status": "in_progress",
                                                       "role": "assistant", "content": []}}),
    sse_record("response.content_part.added", {"type": "response.content_part.added", "sequence_number": 2,
                                               "item_id": "msg_1", "output_index": 0, "content_index": 0,
                                               "part": {"type": "output_text", "text": "", "annotations": []}}),
    sse_record("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 3,
                                              "item_id": "msg_1", "output_index": 0, "content_index": 0,
                                              "delta": "Hello"}),
    sse_record("response.output_text.done", {"type": "response.output_text.done", "sequence_number": 4,
                                             "item_id": "msg_1", "output_index": 0, "content_index": 0,
                                             "text": "Hello"}),
    sse_record("response.completed", {"type": "response.completed", "sequence_number": 5, "response": dict(
        RESP_OBJ, status="completed", usage={"input_tokens": 5, "output_tokens": 1, "total_tokens": 6})}),
]


def gemini_chunk(text, finish=None):
    cand = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return sse_record(None, {"candidates": [cand], "modelVersion": "gemini-2.5-flash", "responseId": "r1"})


GEMINI_EVENTS = [gemini_chunk("Hel"), gemini_chunk("lo "), gemini_chunk("world"), gemini_chunk("", "STOP")]

ANTHROPIC_REQ = {"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": True,
                 "messages": [{"role": "user", "content": "hi"}]}
CHAT_REQ = {"model": "gpt-4.1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
RESPONSES_REQ = {"model": "gpt-5-codex", "stream": True, "input": "hi"}
GEMINI_REQ = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}

# name -> path, request body, client headers, upstream events, how many to send before the cut
PROTOS = {
    "anthropic": ("/v1/messages", ANTHROPIC_REQ,
                  {"anthropic-version": "2023-06-01", "x-api-key": CLIENT_KEY}, ANTHROPIC_EVENTS, 3),
    "openai_chat": ("/v1/chat/completions", CHAT_REQ,
                    {"Authorization": "Bearer " + CLIENT_KEY}, CHAT_EVENTS, 2),
    "openai_responses": ("/v1/responses", RESPONSES_REQ,
                         {"Authorization": "Bearer " + CLIENT_KEY}, RESPONSES_EVENTS, 4),
    "gemini": ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", GEMINI_REQ,
               {"x-goog-api-key": CLIENT_KEY}, GEMINI_EVENTS, 2),
}

LIFECYCLE_TIMEOUTS = "{ connect = 5, first_byte = 5, idle = 0.5, total = 60 }"


def closed_port():
    """A loopback port with nobody listening (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- test base


class LifecycleCase(harness.SluiceTestCase):
    """A sluice with history in a temp dir, short idle timeout, no retries."""

    timeouts = LIFECYCLE_TIMEOUTS

    def start(self, routes=None, suppliers_extra="", timeouts=None):
        d = tempfile.mkdtemp(prefix="sluice-life-")
        self.addCleanup(shutil.rmtree, d, True)
        extra = '  retry = { attempts = 1 },\n  history = { path = "%s/history.db" },\n' % d
        return self.start_sluice(timeouts=timeouts or self.timeouts, routes=routes,
                                 suppliers_extra=suppliers_extra, extra=extra)

    def open_stream(self, proto, rid):
        """Sends the streaming request of `proto` on a raw connection; returns the connection."""
        path, body, headers, _, _ = PROTOS[proto]
        hdrs = dict(headers, **{"Content-Type": "application/json", "x-request-id": rid})
        c = RawConn(self.sluice.port, timeout=READ_TIMEOUT)
        self.addCleanup(c.close)
        c.send(build_request("POST", path, json.dumps(body), hdrs, self.sluice.port))
        return c

    def stream(self, proto, rid):
        """The whole response to `proto`'s streaming request; fails on a hang."""
        c = self.open_stream(proto, rid)
        try:
            return c.read_response(timeout=READ_TIMEOUT)
        except (socket.timeout, EOFError) as e:
            self.fail("stream did not end well-formed within %.0f s: %r; got so far %r%s"
                      % (READ_TIMEOUT, e, c.buf[-600:], self.diag()))

    def record(self, rid, timeout=5.0):
        """The history record for request id `rid` (waits for it to be written)."""
        def get():
            r = harness.request(self.sluice.port, "GET", "/_sluice/requests/" + rid)
            return r if r.status == 200 else None
        r = harness.wait_for(get, timeout=timeout, interval=0.1)
        self.assertIsNotNone(r, "no history record for %s%s" % (rid, self.diag()))
        return r.json()

    def assert_cut_record(self, rec, reason):
        self.assertEqual(rec["reason"], reason, rec)
        self.assertIs(rec["partial"], True, rec)
        self.assertIs(rec["expected"], False, rec)
        self.assertEqual(rec["status"], 200, rec)
        self.assertIn("partial=true; reason=%s" % reason, rec["error"] or "", rec)

    def check_tail(self, proto, tail, reason):
        """The protocol's error ending, parsed from what followed the upstream's bytes."""
        self.assertTrue(tail.endswith(b"\n\n"), "tail does not end an SSE record: %r" % tail)
        evs = parse_sse(tail)
        if proto == "anthropic":
            # The block the upstream left open (all cuts here are inside
            # block 0) is stopped first, as a translated stream's would be.
            self.assertEqual([e["event"] for e in evs], ["content_block_stop", "error", "message_stop"], tail)
            self.assertEqual(json.loads(evs[0]["data"])["index"], 0)
            evs = evs[1:]
            err = json.loads(evs[0]["data"])
            self.assertEqual(err["type"], "error")
            self.assertIn(reason, err["error"]["message"])
            self.assertEqual(json.loads(evs[1]["data"]), {"type": "message_stop"})
        elif proto == "openai_chat":
            self.assertEqual(len(evs), 2, tail)
            self.assertIn(reason, json.loads(evs[0]["data"])["error"]["message"])
            self.assertEqual(evs[1]["data"], "[DONE]")
        elif proto == "openai_responses":
            # The translated streams' tail: an error event, then a whole
            # failed response (id, output, numbered after the upstream's).
            self.assertEqual([e["event"] for e in evs], ["error", "response.failed"], tail)
            failed = json.loads(evs[1]["data"])
            self.assertEqual(failed["type"], "response.failed")
            self.assertEqual(failed["response"]["status"], "failed")
            self.assertEqual(failed["response"]["id"], "resp_1")
            self.assertIsInstance(failed["response"]["output"], list)
            self.assertIsInstance(failed["sequence_number"], int)
            self.assertIn(reason, failed["response"]["error"]["message"])
        else:
            self.assertEqual(len(evs), 1, tail)
            self.assertIn(reason, json.loads(evs[0]["data"])["error"]["message"])


# ---------------------------------------------------------------- passthrough streams cut by the upstream

CUTS = {
    # reason -> extra scene keys ending the exchange after the partial chunks
    "UPSTREAM_EOF_EARLY": {"close_after": True},
    "UPSTREAM_RESET": {"reset": True},
    "UPSTREAM_TIMEOUT_IDLE": {"stall_ms": 20000},
}


class PassthroughCutTest(LifecycleCase):
    def setUp(self):
        super().setUp()
        self.start()

    def run_cut(self, proto, reason):
        _, _, _, events, keep = PROTOS[proto]
        partial = "".join(events[:keep])
        scene = {"status": 200, "headers": {"Content-Type": "text/event-stream"},
                 "chunks": [{"data": e, "delay_ms": 10} for e in events[:keep]]}
        scene.update(CUTS[reason])
        self.mock.enqueue(scene)
        rid = "cut-%s-%s" % (proto, reason.lower())
        t0 = time.monotonic()
        r = self.stream(proto, rid)
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(r.header("x-request-id"), rid)
        self.assertTrue(r.body.startswith(partial.encode()),
                        "the upstream's bytes did not reach the client unchanged: %r" % r.body[:400])
        self.check_tail(proto, r.body[len(partial):], reason)
        self.assert_cut_record(self.record(rid), reason)
        if reason == "UPSTREAM_TIMEOUT_IDLE":
            # sluice, not the upstream, ended it: long before the 20 s stall,
            # and it dropped the stalled upstream connection.
            self.assertLess(time.monotonic() - t0, READ_TIMEOUT)
            gone = harness.wait_for(lambda: self.mock.requests()[0]["client_gone"], timeout=3)
            self.assertTrue(gone, "stalled upstream connection still open")

    def test_eof_without_terminal_but_clean_chunked_end(self):
        # The upstream ends its chunked body properly but never sent
        # message_stop: still an early end, not a complete answer.
        _, _, _, events, keep = PROTOS["anthropic"]
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": e} for e in events[:keep]]})
        r = self.stream("anthropic", "cut-clean-end")
        self.assertEqual(r.status, 200)
        self.check_tail("anthropic", r.body[len("".join(events[:keep])):], "UPSTREAM_EOF_EARLY")
        self.assert_cut_record(self.record("cut-clean-end"), "UPSTREAM_EOF_EARLY")


def _add_cut_tests():
    for proto in PROTOS:
        for reason in CUTS:
            def t(self, proto=proto, reason=reason):
                self.run_cut(proto, reason)
            t.__name__ = "test_%s_%s" % (proto, reason.lower())
            t.__doc__ = "%s passthrough stream cut by %s" % (proto, reason)
            setattr(PassthroughCutTest, t.__name__, t)


_add_cut_tests()


class CompleteStreamTest(LifecycleCase):
    def setUp(self):
        super().setUp()
        self.start()

    def test_complete_streams_are_complete_and_untouched(self):
        for proto, (_, _, _, events, _) in PROTOS.items():
            with self.subTest(proto=proto):
                whole = "".join(events)
                self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                                   "chunks": [{"data": e, "delay_ms": 5} for e in events]})
                rid = "whole-" + proto
                r = self.stream(proto, rid)
                self.assertEqual(r.status, 200)
                self.assertEqual(r.body, whole.encode(), "a complete stream must pass unchanged")
                rec = self.record(rid)
                self.assertEqual(rec["reason"], "COMPLETE", rec)
                self.assertIs(rec["partial"], False, rec)
                self.assertIsNone(rec["error"], rec)
                self.assertEqual(rec["status"], 200)


# ---------------------------------------------------------------- translated stream cut by the upstream

CHAT_TOOL_EVENTS = [
    chat_chunk({"role": "assistant", "content": ""}),
    chat_chunk({"content": "Let me check."}),
    chat_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                "function": {"name": "get_weather", "arguments": ""}}]}),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
]


class TranslatedCutTest(LifecycleCase):
    def setUp(self):
        super().setUp()
        self.start(routes='{ claude = { { match = "*", supplier = "xo" } } }')

    def test_anthropic_client_openai_supplier_cut_after_tool_call_started(self):
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": e, "delay_ms": 10} for e in CHAT_TOOL_EVENTS],
                           "close_after": True})
        r = self.stream("anthropic", "translated-cut")
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        events = parse_sse(r.body)
        names = [e["event"] for e in events if e["event"] != "ping"]
        datas = [json.loads(e["data"]) for e in events if e["event"] != "ping"]
        self.assertEqual(names[0], "message_start", names)
        self.assertEqual(names[-2:], ["error", "message_stop"], names)
        self.assertEqual(datas[-2]["type"], "error")
        self.assertIn("UPSTREAM_EOF_EARLY", datas[-2]["error"]["message"])
        # The tool call had started: the client saw it, and every block that
        # was opened is stopped before the error.
        starts = [d for d in datas if d["type"] == "content_block_start"]
        self.assertIn("tool_use", [d["content_block"]["type"] for d in starts], names)
        stops = [d["index"] for d in datas if d["type"] == "content_block_stop"]
        self.assertEqual(sorted(stops), sorted(d["index"] for d in starts),
                         "open blocks not closed: %s" % names)
        err_at = names.index("error")
        stop_at = [i for i, n in enumerate(names) if n == "content_block_stop"]
        self.assertTrue(all(i < err_at for i in stop_at), "a block closed after the error: %s" % names)
        self.assertNotIn("content_block_delta", names[err_at:])
        self.assertNotIn("message_delta", names, "a cut stream must not claim a stop reason")
        self.assert_cut_record(self.record("translated-cut"), "UPSTREAM_EOF_EARLY")

    def test_upstream_5xx_before_the_stream_in_the_clients_shape(self):
        self.mock.enqueue({"status": 500, "headers": {"Content-Type": "application/json"},
                           "body": json.dumps({"error": {"message": "chat-busy-9313", "type": "server_error"}})})
        r = self.stream("anthropic", "translated-500")
        self.assertEqual(r.status, 500, "%r%s" % (r, self.diag()))
        body = r.json()
        self.assertEqual(body["type"], "error", body)
        self.assertIn("chat-busy-9313", body["error"]["message"])
        rec = self.record("translated-500")
        self.assertEqual((rec["reason"], rec["partial"], rec["status"]), ("UPSTREAM_HTTP_ERROR", False, 500), rec)

    def test_translated_stream_reset_and_stall(self):
        for reason in ("UPSTREAM_RESET", "UPSTREAM_TIMEOUT_IDLE"):
            with self.subTest(reason=reason):
                scene = {"headers": {"Content-Type": "text/event-stream"},
                         "chunks": [{"data": e} for e in CHAT_TOOL_EVENTS[:2]]}
                scene.update(CUTS[reason])
                self.mock.enqueue(scene)
                rid = "translated-" + reason.lower()
                r = self.stream("anthropic", rid)
                self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
                events = [e for e in parse_sse(r.body) if e["event"] != "ping"]
                names = [e["event"] for e in events]
                self.assertEqual(names[-2:], ["error", "message_stop"], names)
                self.assertIn(reason, json.loads(events[-2]["data"])["error"]["message"])
                self.assertEqual(names.count("content_block_start"), names.count("content_block_stop"), names)
                self.assert_cut_record(self.record(rid), reason)


# ---------------------------------------------------------------- before the first byte


class BeforeFirstByteTest(LifecycleCase):
    timeouts = "{ connect = 5, first_byte = 0.5, idle = 5, total = 60 }"

    def setUp(self):
        super().setUp()
        self.dead_port = closed_port()
        self.start(suppliers_extra='    dead = { protocol = "openai-chat", base_url = '
                   '"http://127.0.0.1:%d/v1", auth = { type = "none" } },\n' % self.dead_port,
                   routes="""{
    claude = { { match = "*", supplier = "an" } },
    chat   = { { match = "refused-*", supplier = "dead" }, { match = "*", supplier = "oa" } },
    codex  = { { match = "*", supplier = "rs" } },
    gemini = { { match = "*", supplier = "gm" } },
  }""")

    def check_error_shape(self, proto, r, status):
        self.assertEqual(r.status, status, "%r%s" % (r, self.diag()))
        self.assertTrue((r.header("content-type") or "").startswith("application/json"), r.headers)
        body = r.json()
        if proto == "anthropic":
            self.assertEqual(body["type"], "error", body)
            self.assertIsInstance(body["error"]["type"], str)
            return body["error"]["message"]
        if proto == "gemini":
            self.assertEqual(body["error"]["code"], status, body)
            self.assertIsInstance(body["error"]["status"], str)
            return body["error"]["message"]
        self.assertIsInstance(body["error"]["type"], str, body)
        return body["error"]["message"]

    def test_first_byte_timeout_is_504_in_each_clients_shape(self):
        for proto in PROTOS:
            with self.subTest(proto=proto):
                _, _, _, events, _ = PROTOS[proto]
                self.mock.enqueue({"delay_ms": 5000, "headers": {"Content-Type": "text/event-stream"},
                                   "chunks": [{"data": e} for e in events]})
                rid = "fbt-" + proto
                t0 = time.monotonic()
                r = self.stream(proto, rid)
                self.assertLess(time.monotonic() - t0, 4.5, "504 must come from the 0.5 s timer")
                msg = self.check_error_shape(proto, r, 504)
                self.assertIn("first-byte", msg)
                rec = self.record(rid)
                self.assertEqual(rec["reason"], "UPSTREAM_TIMEOUT_FIRST_BYTE", rec)
                self.assertIs(rec["partial"], False, rec)
                self.assertEqual(rec["status"], 504, rec)

    def test_upstream_5xx_before_the_stream_keeps_status_and_message(self):
        body = json.dumps({"type": "error", "error": {"type": "overloaded_error",
                                                      "message": "upstream-busy-4471"}})
        self.mock.enqueue({"status": 503, "headers": {"Content-Type": "application/json"}, "body": body})
        r = self.stream("anthropic", "up-503")
        self.assertEqual(r.status, 503, "%r%s" % (r, self.diag()))
        self.assertEqual(r.json()["error"]["message"], "upstream-busy-4471")
        rec = self.record("up-503")
        self.assertEqual((rec["reason"], rec["partial"], rec["status"]), ("UPSTREAM_HTTP_ERROR", False, 503), rec)

    def test_refused_connection_is_502_naming_the_supplier(self):
        body = dict(CHAT_REQ, model="refused-model")
        r = harness.request(self.sluice.port, "POST", "/v1/chat/completions", body=body,
                            headers={"x-request-id": "refused-1"}, timeout=READ_TIMEOUT)
        msg = self.check_error_shape("openai_chat", r, 502)
        self.assertIn("dead", msg, "the error must name the supplier")
        rec = self.record("refused-1")
        self.assertEqual(rec["reason"], "UPSTREAM_CONNECT", rec)
        self.assertEqual(rec["supplier"], "dead")
        self.assertIs(rec["partial"], False, rec)
        self.assertEqual(rec["status"], 502)
        self.assertEqual(self.mock.requests(), [], "nothing may reach the other suppliers")


# ---------------------------------------------------------------- the client leaves


class ClientAbortTest(LifecycleCase):
    def setUp(self):
        super().setUp()
        self.start()

    def test_client_disconnect_mid_stream(self):
        tick = chat_chunk({"content": "."})
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": CHAT_EVENTS[0]}] + [{"data": tick, "delay_ms": 100}] * 300})
        c = self.open_stream("openai_chat", "abort-1")
        c.read_until(b'"role": "assistant"', timeout=5)
        c.read_until(b'"content": "."', timeout=5)   # the stream is flowing
        c.close()
        t0 = time.monotonic()
        gone = harness.wait_for(lambda: self.mock.requests()[0]["client_gone"], timeout=5)
        self.assertTrue(gone, "upstream still streaming 5 s after the client left" + self.diag())
        self.assertLess(time.monotonic() - t0, 3.0, "upstream not dropped promptly")
        rec = self.record("abort-1")
        self.assertEqual(rec["reason"], "CLIENT_ABORT", rec)
        self.assertIs(rec["expected"], True, rec)
        self.assertIs(rec["partial"], True, rec)
        self.assertIn("reason=CLIENT_ABORT", rec["error"] or "", rec)

    def test_client_disconnect_before_first_byte(self):
        # The client gives up while the upstream is still thinking: nothing
        # was sent, so nothing is partial, and the upstream is dropped too.
        self.mock.enqueue({"delay_ms": 4000, "headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": e} for e in CHAT_EVENTS]})
        c = self.open_stream("openai_chat", "abort-early")
        self.assertTrue(harness.wait_for(lambda: len(self.mock.requests()) == 1, timeout=5))
        c.close()
        gone = harness.wait_for(lambda: self.mock.requests()[0]["client_gone"], timeout=3)
        self.assertTrue(gone, "upstream request still pending after the client left" + self.diag())
        rec = self.record("abort-early")
        self.assertEqual(rec["reason"], "CLIENT_ABORT", rec)
        self.assertIs(rec["expected"], True, rec)
        self.assertIs(rec["partial"], False, rec)

    def test_client_disconnect_mid_translated_stream(self):
        tick = chat_chunk({"content": "."})
        self.sluice.cleanup()
        self.start(routes='{ claude = { { match = "*", supplier = "xo" } } }')
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": CHAT_EVENTS[0]}] + [{"data": tick, "delay_ms": 100}] * 300})
        c = self.open_stream("anthropic", "abort-translated")
        c.read_until(b"event: content_block_delta", timeout=5)
        c.close()
        gone = harness.wait_for(lambda: self.mock.requests()[0]["client_gone"], timeout=3)
        self.assertTrue(gone, "upstream still streaming after the client left" + self.diag())
        rec = self.record("abort-translated")
        self.assertEqual((rec["reason"], rec["expected"], rec["partial"]), ("CLIENT_ABORT", True, True), rec)


if __name__ == "__main__":
    harness.main()
