"""test_honest_ends — an answer that did not finish never looks finished (issue 8, items 1-10).

The mock upstream misbehaves the ways real suppliers and the attacker's
harness did: a body cut short of its Content-Length, a stream cut inside an
event, an event over `max_event`, a last event with no blank line, a JSON
answer to a stream request cut short, a head that never ends, a head that is
not HTTP or is 400 KB, a header value with a bare CR, translated answers that
cannot be decoded, token counts past 2^53. For each, the client must get what
its HTTP library or SDK recognises as a failure (a transport error, or the
protocol's own error ending that starts on an event boundary) and the history
record must say what happened. A client that leaves once it has the terminal
event had the whole answer; sluice's own 4xx answers are LOCAL_ERROR.

The "SDK shape" checks parse the client's bytes the way the official SDKs
do: every `data:` is JSON.parse'd (one glued half-event makes them throw a
syntax error instead of raising the API error), and the error must be
followed by the protocol's end marker.
"""

import base64
import gzip
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import RawConn, build_request, parse_sse, sse_record  # noqa: E402

READ_TIMEOUT = 8.0
KEY = "sk-client-key-honest-ends-7731"


def chat_chunk(delta, finish=None, usage=None):
    return harness.chat_chunk(delta, finish, usage, id="chatcmpl-9")


ANTHROPIC = [
    sse_record("message_start", {"type": "message_start", "message": {
        "id": "msg_9", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    sse_record("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
    sse_record("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "Hello"}}),
    sse_record("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": " there, a longer piece"}}),
]
CHAT = [chat_chunk({"role": "assistant", "content": ""}), chat_chunk({"content": "Hello"}),
        chat_chunk({"content": " there, a longer piece"})]
RESP_OBJ = {"id": "resp_9", "object": "response", "status": "in_progress", "output": [], "usage": None}
RESPONSES = [
    sse_record("response.created", {"type": "response.created", "sequence_number": 0, "response": RESP_OBJ}),
    sse_record("response.output_item.added", {"type": "response.output_item.added", "sequence_number": 1,
                                              "output_index": 0, "item": {"type": "message", "id": "msg_1",
                                                                          "status": "in_progress", "role": "assistant",
                                                                          "content": []}}),
    sse_record("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 2,
                                              "item_id": "msg_1", "output_index": 0, "content_index": 0,
                                              "delta": "Hello there, a longer piece"}),
]
RESPONSES_END = sse_record("response.completed", {"type": "response.completed", "sequence_number": 3, "response": dict(
    RESP_OBJ, status="completed", usage={"input_tokens": 5, "output_tokens": 1, "total_tokens": 6})})


def gemini_chunk(text, finish=None):
    cand = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return sse_record(None, {"candidates": [cand], "modelVersion": "gemini-2.5-flash", "responseId": "r9"})


GEMINI = [gemini_chunk("Hel"), gemini_chunk("lo "), gemini_chunk("there, a longer piece")]

PROTOS = {
    "anthropic": ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]},
                  {"anthropic-version": "2023-06-01", "x-api-key": KEY}, ANTHROPIC),
    "openai_chat": ("/v1/chat/completions", {"model": "gpt-4.1", "stream": True,
                                             "messages": [{"role": "user", "content": "hi"}]},
                    {"Authorization": "Bearer " + KEY}, CHAT),
    "openai_responses": ("/v1/responses", {"model": "gpt-5-codex", "stream": True, "input": "hi"},
                         {"Authorization": "Bearer " + KEY}, RESPONSES),
    "gemini": ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
               {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, {"x-goog-api-key": KEY}, GEMINI),
}


class SDKError(Exception):
    """What an SDK raises for an API error it parsed."""


def expect(cond, why=""):
    """An assertion that holds under python -O too (sdk_read is test logic, not a debug aid)."""
    if not cond:
        raise AssertionError(why)


def sdk_read(proto, body):
    """Consumes a stream the way that protocol's official SDK does. Returns the
    error message the SDK would raise, after checking the end marker followed.
    A data line that is not JSON raises ValueError (the SDKs' syntax error)."""
    evs = parse_sse(body)
    if proto == "anthropic":
        names = [e["event"] for e in evs]
        datas = [json.loads(e["data"]) for e in evs]   # every event is parsed
        expect(names[-2:] == ["error", "message_stop"], names)
        opened = [d["index"] for d in datas if d["type"] == "content_block_start"]
        stopped = [d["index"] for d in datas if d["type"] == "content_block_stop"]
        expect(opened == stopped, "blocks left open at the error: %r vs %r" % (opened, stopped))
        return datas[-2]["error"]["message"]
    if proto == "openai_chat":
        expect(evs[-1]["data"] == "[DONE]", evs[-1])
        objs = [json.loads(e["data"]) for e in evs[:-1]]
        errs = [o["error"]["message"] for o in objs if "error" in o]
        expect(len(errs) == 1 and "error" in objs[-1], objs[-1])
        return errs[0]
    if proto == "openai_responses":
        objs = [json.loads(e["data"]) for e in evs]
        seqs = [o["sequence_number"] for o in objs]
        expect(seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs)  # the stream helper's order
        expect([e["event"] for e in evs[-2:]] == ["error", "response.failed"], [e["event"] for e in evs])
        failed = objs[-1]["response"]
        expect(failed["id"] == "resp_9" and isinstance(failed["output"], list), failed)  # rsp.output iterable
        return failed["error"]["message"]
    objs = [json.loads(e["data"]) for e in evs]
    expect("error" in objs[-1], objs[-1])
    return objs[-1]["error"]["message"]


def read_raw(conn, timeout=READ_TIMEOUT):
    """(status, headers dict, body, ended_cleanly): ended_cleanly is False when
    the connection closed before the chunked body's last chunk — what every
    HTTP client reports as a transport error."""
    head = conn.read_until(b"\r\n\r\n", timeout).decode("latin-1")
    lines = head[:-4].split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        n, _, v = line.partition(":")
        headers[n.strip().lower()] = v.strip()
    if "content-length" in headers:
        return status, headers, conn._read_n(int(headers["content-length"]), timeout), True
    body = b""
    try:
        while True:
            size = int(conn.read_until(b"\r\n", timeout).split(b";")[0], 16)
            if size == 0:
                conn.read_until(b"\r\n", timeout)
                return status, headers, body, True
            body += conn._read_n(size + 2, timeout)[:-2]
    except EOFError:
        return status, headers, body + conn.buf, False


class HonestEndsCase(harness.SluiceTestCase):
    limits = None
    routes = None

    def setUp(self):
        super().setUp()
        d = tempfile.mkdtemp(prefix="sluice-ends-")
        self.addCleanup(shutil.rmtree, d, True)
        extra = '  retry = { attempts = 1 },\n  history = { path = "%s/history.db" },\n' % d
        self.start_sluice(timeouts="{ connect = 5, first_byte = 5, idle = 2, total = 60 }",
                          limits=self.limits, routes=self.routes, extra=extra)

    def send(self, proto, rid, body=None):
        path, req, headers, _ = PROTOS[proto]
        hdrs = dict(headers, **{"Content-Type": "application/json", "x-request-id": rid})
        c = RawConn(self.sluice.port, timeout=READ_TIMEOUT)
        self.addCleanup(c.close)
        c.send(build_request("POST", path, json.dumps(body or req), hdrs, self.sluice.port))
        return c

    def exchange(self, proto, rid, body=None):
        return read_raw(self.send(proto, rid, body))

    def record(self, rid):
        def get():
            r = harness.request(self.sluice.port, "GET", "/_sluice/requests/" + rid)
            return r if r.status == 200 else None
        r = harness.wait_for(get, timeout=5.0, interval=0.1)
        self.assertIsNotNone(r, "no history record for %s%s" % (rid, self.diag()))
        return r.json()


class CutPassthroughTest(HonestEndsCase):
    def test_body_cut_short_of_its_content_length_is_a_transport_error(self):
        # Item 1: 809 bytes declared, 404 sent, then the upstream closes.
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 809\r\n\r\n"
        self.mock.enqueue({"raw": head + "{" + "x" * 403, "close_after": True})
        status, headers, body, clean = self.exchange("openai_chat", "cut-body",
                                                     {"model": "gpt-4.1", "messages": []})
        self.assertEqual(status, 200)
        self.assertEqual(body, b"{" + b"x" * 403)
        self.assertFalse(clean, "a cut body must not end with the last chunk%s" % self.diag())
        rec = self.record("cut-body")
        self.assertEqual((rec["reason"], rec["partial"]), ("UPSTREAM_EOF_EARLY", True), rec)

    def test_json_answer_to_a_stream_request_cut_short_gets_no_sse_tail(self):
        # Item 5: the client asked for a stream; the upstream answered JSON.
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        self.mock.enqueue({"raw": head + '{"id":"chatcmpl-1","choices":[', "close_after": True})
        status, _, body, clean = self.exchange("openai_chat", "cut-json-stream")
        self.assertEqual(status, 200)
        self.assertEqual(body, b'{"id":"chatcmpl-1","choices":[')
        self.assertNotIn(b"data:", body)
        self.assertFalse(clean)
        self.assertEqual(self.record("cut-json-stream")["reason"], "UPSTREAM_EOF_EARLY")

    def run_mid_event_cut(self, proto):
        # Item 2: whole events, then half of the next one, then the upstream closes.
        events = PROTOS[proto][3]
        half = events[-1][:len(events[-1]) // 2]
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": e, "delay_ms": 5} for e in events[:-1]] + [{"data": half}],
                           "close_after": True})
        rid = "mid-event-" + proto
        status, _, body, clean = self.exchange(proto, rid)
        self.assertEqual(status, 200)
        self.assertTrue(clean, "a cut stream still ends well-formed%s" % self.diag())
        whole = "".join(events[:-1]).encode()
        self.assertTrue(body.startswith(whole), body[:300])
        tail = body[len(whole):]
        self.assertTrue(tail.startswith(b"event: ") or tail.startswith(b'data: {"error"'),
                        "the tail must start on an event boundary, got %r" % tail[:200])
        message = sdk_read(proto, body)
        self.assertIn("UPSTREAM_EOF_EARLY", message)
        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["partial"]), ("UPSTREAM_EOF_EARLY", True), rec)

    def test_anthropic_cut_mid_event_sdk_shape(self):
        self.run_mid_event_cut("anthropic")

    def test_openai_chat_cut_mid_event_sdk_shape(self):
        self.run_mid_event_cut("openai_chat")

    def test_openai_responses_cut_mid_event_sdk_shape(self):
        self.run_mid_event_cut("openai_responses")

    def test_gemini_cut_mid_event_sdk_shape(self):
        self.run_mid_event_cut("gemini")

    def test_unterminated_last_event(self):
        # The last event has no blank line, and the chunked body ends cleanly.
        events = ANTHROPIC[:3] + [ANTHROPIC[3].rstrip("\n")]
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": e} for e in events]})
        status, _, body, clean = self.exchange("anthropic", "unterminated")
        self.assertTrue(clean)
        self.assertNotIn(b"longer piece", body)
        self.assertIn("UPSTREAM_EOF_EARLY", sdk_read("anthropic", body))

    def test_client_leaving_after_the_terminal_event_had_the_whole_answer(self):
        # Item 4: Codex closes as soon as it reads response.completed, before
        # the upstream's chunked terminator (stalled here) arrives.
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": e} for e in RESPONSES + [RESPONSES_END]], "stall_ms": 1500})
        c = self.send("openai_responses", "codex-leaves")
        got = c.read_until(b'"response.completed"', READ_TIMEOUT)
        got += c.read_until(b"\n\n", READ_TIMEOUT)
        c.close()
        rec = self.record("codex-leaves")
        self.assertEqual((rec["reason"], rec["partial"]), ("COMPLETE", False), rec)
        self.assertGreaterEqual(rec["bytes_out"], len("".join(RESPONSES + [RESPONSES_END])), rec)

    def test_client_leaving_before_the_terminal_event_is_an_abort(self):
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": e} for e in RESPONSES], "stall_ms": 1500})
        c = self.send("openai_responses", "leaves-early")
        c.read_until(b"Hello there", READ_TIMEOUT)
        c.close()
        rec = self.record("leaves-early")
        self.assertEqual((rec["reason"], rec["partial"]), ("CLIENT_ABORT", True), rec)
        self.assertGreater(rec["bytes_out"], 0, rec)


class EventLimitTest(HonestEndsCase):
    limits = "{ max_body = 1024 * 1024, max_event = 4096 }"

    def test_event_over_max_event_ends_on_a_boundary(self):
        big = chat_chunk({"content": "y" * 9000})
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": CHAT[0] + CHAT[1] + big[:3000]}, {"data": big[3000:]}]})
        status, _, body, clean = self.exchange("openai_chat", "over-limit")
        self.assertTrue(clean)
        self.assertTrue(body.startswith((CHAT[0] + CHAT[1]).encode()))
        self.assertNotIn(b"yyyy", body)
        self.assertIn("LIMIT_EVENT_SIZE", sdk_read("openai_chat", body))
        self.assertEqual(self.record("over-limit")["reason"], "LIMIT_EVENT_SIZE")


class UpstreamProtocolErrorTest(HonestEndsCase):
    def expect_502(self, scene, rid):
        self.mock.enqueue(scene)
        status, headers, body, clean = self.exchange("openai_chat", rid, {"model": "gpt-4.1", "messages": []})
        self.assertEqual(status, 502, "%r%s" % (body, self.diag()))
        self.assertIn("error", json.loads(body))
        rec = self.record(rid)
        self.assertEqual((rec["status"], rec["reason"]), (502, "UPSTREAM_PROTOCOL"), rec)

    def test_upstream_closing_inside_its_head(self):
        # Item 6.
        self.expect_502({"raw": "HTTP/1.1 200 OK\r\nContent-Type: applic", "close_after": True}, "head-cut")

    def test_non_http_answer(self):
        self.expect_502({"raw": "SSH-2.0-OpenSSH_9.2\r\n\r\n", "close_after": True}, "not-http")

    def test_huge_head(self):
        head = "HTTP/1.1 200 OK\r\n" + "".join("X-Pad-%d: %s\r\n" % (i, "p" * 1000) for i in range(400))
        self.expect_502({"raw": head + "Content-Length: 2\r\n\r\n{}", "close_after": True}, "huge-head")

    def test_header_value_with_a_bare_cr(self):
        # Item 7: once 200 COMPLETE with nothing sent, the client waiting.
        self.expect_502({"raw": "HTTP/1.1 200 OK\r\nX-Bad: a\rb\r\nContent-Type: application/json\r\n"
                                "Content-Length: 2\r\n\r\n{}", "close_after": True}, "bare-cr")


class TranslatedAnswerTest(HonestEndsCase):
    routes = '{ claude = { { match = "*", supplier = "xo" } } }'
    ANTHROPIC_JSON = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}

    def expect_unusable(self, scene, rid):
        self.mock.enqueue(scene)
        status, _, body, _ = self.exchange("anthropic", rid, self.ANTHROPIC_JSON)
        self.assertEqual(status, 502, "%r%s" % (body, self.diag()))
        err = json.loads(body)
        self.assertEqual(err["type"], "error", err)
        self.assertIn("supplier xo", err["error"]["message"])
        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["status"]), ("UPSTREAM_PROTOCOL", 502), rec)
        # The client got a whole error answer: nothing of it was cut.
        self.assertIs(rec["partial"], False, rec)

    def test_html_200(self):
        # Item 8.
        self.expect_unusable({"headers": {"Content-Type": "text/html"}, "body": "<html>login</html>"}, "html")

    def test_gzip_body_despite_identity(self):
        raw = gzip.compress(json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode())
        self.expect_unusable({"headers": {"Content-Type": "application/json", "Content-Encoding": "gzip"},
                              "chunks": [{"data_b64": base64.b64encode(raw).decode()}]}, "gzip")

    def test_choices_as_an_object(self):
        self.expect_unusable({"body": json.dumps({"id": "x", "choices": {"0": {"message": {"content": "hi"}}}})},
                             "choices-object")

    def test_error_object_in_a_200_names_the_upstream_message(self):
        self.mock.enqueue({"body": json.dumps({"error": {"message": "quota gone", "type": "insufficient_quota"}})})
        status, _, body, _ = self.exchange("anthropic", "error-in-200", self.ANTHROPIC_JSON)
        self.assertEqual(status, 502)
        self.assertIn("quota gone", json.loads(body)["error"]["message"])
        self.assertEqual(self.record("error-in-200")["reason"], "UPSTREAM_PROTOCOL")

    def test_usage_past_2_53_is_unknown_not_fatal(self):
        # Item 9: the client used to lose message_stop while the record said COMPLETE.
        big = 2 ** 60
        events = [chat_chunk({"role": "assistant", "content": "Hi"}), chat_chunk({}, finish="stop"),
                  sse_record(None, {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                    "choices": [], "usage": {"prompt_tokens": big, "completion_tokens": 3,
                                                             "total_tokens": big}}),
                  sse_record(None, "[DONE]")]
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"}, "chunks": [{"data": e} for e in events]})
        status, _, body, clean = self.exchange("anthropic", "big-usage", dict(self.ANTHROPIC_JSON, stream=True))
        self.assertTrue(clean)
        names = [e["event"] for e in parse_sse(body)]
        self.assertEqual(names[-1], "message_stop", names)
        self.assertNotIn("error", names)
        rec = self.record("big-usage")
        self.assertEqual(rec["reason"], "COMPLETE", rec)
        self.assertIsNone(rec["usage"]["input_tokens"], rec)
        self.assertEqual(rec["usage"]["output_tokens"], 3, rec)


# A codec whose clean close raises (a bug in a script): the stream must still
# end the protocol's way and the record must say SCRIPT_ERROR. The ops hook
# plants the bug by wrapping the Anthropic encoder the host will use.
BROKEN_CLOSE = """function(ctx)
    local A = require("sluice.translate").protocol("anthropic")
    if not A.broken_for_test then
      A.broken_for_test = true
      local make = A.stream_encoder
      A.stream_encoder = function(o)
        local e = make(o)
        local close = e.close
        e.close = function(self, oc)
          if oc and oc.complete then error("planted bug in close") end
          return close(self, oc)
        end
        return e
      end
    end
  end"""


class FailingFinishHookTest(harness.SluiceTestCase):
    def test_failing_finish_hook_still_ends_the_stream(self):
        d = tempfile.mkdtemp(prefix="sluice-ends-")
        self.addCleanup(shutil.rmtree, d, True)
        self.start_sluice(routes='{ claude = { { match = "*", supplier = "xo" } } }', on_request=BROKEN_CLOSE,
                          extra='  retry = { attempts = 1 },\n  history = { path = "%s/history.db" },\n' % d)
        events = [chat_chunk({"role": "assistant", "content": "Hi"}), chat_chunk({}, finish="stop"),
                  sse_record(None, "[DONE]")]
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"}, "chunks": [{"data": e} for e in events]})
        c = RawConn(self.sluice.port, timeout=READ_TIMEOUT)
        self.addCleanup(c.close)
        c.send(build_request("POST", "/v1/messages", json.dumps(dict(TranslatedAnswerTest.ANTHROPIC_JSON, stream=True)),
                             {"Content-Type": "application/json", "anthropic-version": "2023-06-01",
                              "x-request-id": "broken-close"}, self.sluice.port))
        status, _, body, clean = read_raw(c)
        self.assertTrue(clean, self.diag())
        self.assertIn("SCRIPT_ERROR", sdk_read("anthropic", body))
        rec = HonestEndsCase.record(self, "broken-close")
        self.assertEqual((rec["reason"], rec["partial"]), ("SCRIPT_ERROR", True), rec)
        self.assertIn("finish hook failed", rec["error"], rec)  # the hook's own text, kept
        self.assertIn("planted bug in close", rec["error"], rec)


class LocalAnswerTest(HonestEndsCase):
    def test_local_errors_have_their_own_reason(self):
        # Item 10: these were recorded as UPSTREAM_HTTP_ERROR.
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(build_request("POST", "/v1/messages", "{not json", {"x-request-id": "bad-json",
                                                                   "anthropic-version": "2023-06-01"},
                             self.sluice.port))
        self.assertEqual(c.read_response().status, 400)
        rec = self.record("bad-json")
        self.assertEqual((rec["reason"], rec["expected"], rec["partial"]), ("LOCAL_ERROR", True, False), rec)
        self.assertIn("not a JSON object", rec["error"])
        self.assertEqual(self.mock.requests(), [])

    def test_model_list_is_complete(self):
        r = harness.request(self.sluice.port, "GET", "/v1/models", headers={"x-request-id": "models"})
        self.assertEqual(r.status, 200)
        self.assertEqual(self.record("models")["reason"], "COMPLETE")


if __name__ == "__main__":
    harness.main()
