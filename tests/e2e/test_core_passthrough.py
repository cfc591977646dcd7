"""test_core_passthrough — sluice as a transparent proxy for all four services.

When the supplier speaks the client's protocol and no model is rewritten,
sluice must be invisible: the request body and the response body (streamed
or not) cross it byte for byte, the status and content type come through,
and only the things a gateway is for change — the upstream path, Host, hop-
by-hop headers, and auth (the client's key replaced by the supplier's unless
the supplier uses passthrough auth). Also here: model rewrite, prefixed
paths, keep-alive reuse on both sides, a client abort reaching the upstream,
upstream error statuses passed through, and a translation smoke test.

The request bodies are deliberately written the way no JSON encoder would
write them (odd spacing, \\u escapes, 0.70, empty arrays, 20-digit integers)
so that any re-encoding on the passthrough path shows up as a byte diff.
"""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import RawConn, build_request, header_values, sse_chunks  # noqa: E402

CLIENT_KEY = "sk-client-key-must-not-leak-7731"

# ---------------------------------------------------------------- fixtures

ANTHROPIC_REQ = (
    '{"model": "claude-sonnet-4-5",  "max_tokens":1024, "stream":%s,\n'
    ' "system":[{"type":"text","text":"You are terse.","cache_control":{"type":"ephemeral"}}],'
    '"messages":[{"role":"user","content":"Weather in Paris? caf\\u00e9 \u2603"}],'
    '"tools":[{"name":"get_weather","description":"d","input_schema":{"type":"object",'
    '"properties":{"city":{"type":"string"}},"required":[]}}],"temperature":0.70}')

ANTHROPIC_SSE = """event: message_start
data: {"type":"message_start","message":{"id":"msg_01XY","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,"output_tokens":1}}}

event: ping
data: {"type": "ping"}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Check\u00e9 \u2603"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01A","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"city\\": \\"Pa"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ris\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":40}}

event: message_stop
data: {"type":"message_stop"}

"""

ANTHROPIC_JSON = (
    '{"id":"msg_01XY","type":"message","role":"assistant","model":"claude-sonnet-4-5",'
    '"content":[{"type":"text","text":"Sunny, 21\\u00b0C."}],"stop_reason":"end_turn",'
    '"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":6}}')

CHAT_REQ = (
    '{"model":"%s", "stream":%s,"stream_options":{"include_usage":true},'
    '"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"caf\\u00e9?"}],'
    '"tools":[{"type":"function","function":{"name":"get_weather","parameters":'
    '{"type":"object","properties":{},"required":[]}}}],"seed":12345678901234567890,'
    '"temperature":0.70}')

CHAT_SSE = """data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4.1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4.1","choices":[{"index":0,"delta":{"content":"Check \u2603"},"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4.1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4.1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":\\"Paris\\"}"}}]},"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4.1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":null}

data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4.1","choices":[],"usage":{"prompt_tokens":2100,"completion_tokens":40,"total_tokens":2140,"prompt_tokens_details":{"cached_tokens":2048}}}

data: [DONE]

"""

CHAT_JSON = (
    '{"id":"chatcmpl-abc","object":"chat.completion","created":1730000000,"model":"gpt-4.1",'
    '"choices":[{"index":0,"message":{"role":"assistant","content":"Sunny \\u2600"},'
    '"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":3,"total_tokens":23}}')

RESPONSES_REQ = (
    '{"model":"gpt-5-codex","stream":%s,"instructions":"You are Codex.",'
    '"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"ls \\u00e9"}]}],'
    '"tools":[{"type":"function","name":"shell","parameters":{"type":"object","properties":{},'
    '"required":[]},"strict":false}],"store":false,"prompt_cache_key":"abc-123"}')

RESPONSES_SSE = """event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","output":[],"usage":null}}

event: response.in_progress
data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_1","object":"response","status":"in_progress","output":[],"usage":null}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"type":"message","id":"msg_1","status":"in_progress","role":"assistant","content":[]}}

event: response.content_part.added
data: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Done \u2603","logprobs":[]}

event: response.output_text.done
data: {"type":"response.output_text.done","sequence_number":5,"item_id":"msg_1","output_index":0,"content_index":0,"text":"Done \u2603","logprobs":[]}

event: response.content_part.done
data: {"type":"response.content_part.done","sequence_number":6,"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","text":"Done \u2603","annotations":[]}}

event: response.output_item.done
data: {"type":"response.output_item.done","sequence_number":7,"output_index":0,"item":{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Done \u2603","annotations":[]}]}}

event: response.completed
data: {"type":"response.completed","sequence_number":8,"response":{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Done \u2603","annotations":[]}]}],"usage":{"input_tokens":30,"input_tokens_details":{"cached_tokens":0},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":33}}}

"""

RESPONSES_JSON = (
    '{"id":"resp_1","object":"response","status":"completed","model":"gpt-5-codex",'
    '"output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant",'
    '"content":[{"type":"output_text","text":"Done","annotations":[]}]}],'
    '"usage":{"input_tokens":30,"output_tokens":1,"total_tokens":31}}')

GEMINI_REQ = (
    '{"contents":[{"role":"user","parts":[{"text":"Hi \\u00e9"}]}],'
    '"generationConfig":{"temperature":0.70,"maxOutputTokens":256},'
    '"tools":[{"functionDeclarations":[{"name":"f","parameters":{"type":"object","properties":{}}}]}]}')

# Google sends CRLF record separators; passthrough must keep them.
GEMINI_SSE = (
    'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}],'
    '"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9},"modelVersion":"gemini-2.5-flash","responseId":"r1"}\r\n\r\n'
    'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"lo \u2603!"}]},"index":0}],'
    '"modelVersion":"gemini-2.5-flash","responseId":"r1"}\r\n\r\n'
    'data: {"candidates":[{"content":{"role":"model","parts":[{"text":""}]},"finishReason":"STOP","index":0}],'
    '"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":3,"totalTokenCount":12},'
    '"modelVersion":"gemini-2.5-flash","responseId":"r1"}\r\n\r\n')

GEMINI_JSON = (
    '{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello!"}]},"finishReason":"STOP",'
    '"index":0}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":2,'
    '"totalTokenCount":11},"modelVersion":"gemini-2.5-flash","responseId":"r2"}')


def stream_scene(text, content_type="text/event-stream"):
    # Split at arbitrary byte offsets (not at record boundaries) with small
    # gaps, so sluice sees records cut across reads.
    return {"status": 200, "headers": {"Content-Type": content_type},
            "chunks": sse_chunks(text, parts=7, delay_ms=15)}


def json_scene(text, status=200):
    return {"status": status, "headers": {"Content-Type": "application/json"}, "body": text}


class PassthroughTest(harness.SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.start_sluice()

    # -- helpers ------------------------------------------------------

    def assert_bytes_equal(self, got, want, what):
        if isinstance(want, str):
            want = want.encode("utf-8")
        if got != want:
            i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]),
                     min(len(got), len(want)))
            self.fail("%s differs at byte %d (got %d bytes, want %d):\n got: %r\nwant: %r%s"
                      % (what, i, len(got), len(want), got[max(0, i - 60):i + 60],
                         want[max(0, i - 60):i + 60], self.diag()))

    def assert_no_client_key(self, up):
        for name, value in up["headers"]:
            self.assertNotIn(CLIENT_KEY, value,
                             "client key forwarded upstream in %s" % name)

    def check_passthrough(self, path, req_body, scene, want_body, want_ctype, headers):
        self.mock.enqueue(scene)
        r = self.post(path, req_body, headers=headers)
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertTrue((r.header("content-type") or "").startswith(want_ctype),
                        "content-type %r" % r.header("content-type"))
        self.assert_bytes_equal(r.body, want_body, "response body")
        up = self.only_request()
        self.assert_bytes_equal(up["body_bytes"], req_body.encode("utf-8"), "upstream request body")
        self.assertEqual(up["method"], "POST")
        self.assertEqual(header_values(up, "host"), ["127.0.0.1:%d" % self.mock.port])
        return r, up

    # -- Anthropic (supplier `an`, passthrough auth) -----------------

    def anthropic_headers(self):
        return {"Content-Type": "application/json", "x-api-key": CLIENT_KEY,
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"}

    def check_anthropic_upstream(self, up):
        self.assertEqual(up["path"], "/v1/messages")
        self.assertEqual(header_values(up, "anthropic-version"), ["2023-06-01"])
        self.assertEqual(header_values(up, "anthropic-beta"),
                         ["interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"])
        # passthrough auth: the client's own key goes upstream, once.
        self.assertEqual(header_values(up, "x-api-key"), [CLIENT_KEY])

    def test_claude_stream_bytes_identical(self):
        r, up = self.check_passthrough("/v1/messages", ANTHROPIC_REQ % "true", stream_scene(ANTHROPIC_SSE),
                                       ANTHROPIC_SSE, "text/event-stream", self.anthropic_headers())
        self.check_anthropic_upstream(up)
        self.assertEqual(harness.parse_sse(r.body)[-1]["event"], "message_stop")

    def test_claude_json_bytes_identical(self):
        _, up = self.check_passthrough("/v1/messages", ANTHROPIC_REQ % "false", json_scene(ANTHROPIC_JSON),
                                       ANTHROPIC_JSON, "application/json", self.anthropic_headers())
        self.check_anthropic_upstream(up)

    # -- OpenAI chat (supplier `oa`, bearer auth) --------------------

    def check_chat_upstream(self, up):
        self.assertEqual(up["path"], "/v1/chat/completions")
        self.assertEqual(header_values(up, "authorization"), ["Bearer sk-upstream-secret-oa"])
        self.assert_no_client_key(up)

    def test_chat_stream_bytes_identical(self):
        _, up = self.check_passthrough("/v1/chat/completions", CHAT_REQ % ("gpt-4.1", "true"),
                                       stream_scene(CHAT_SSE), CHAT_SSE, "text/event-stream",
                                       {"Content-Type": "application/json",
                                        "Authorization": "Bearer " + CLIENT_KEY})
        self.check_chat_upstream(up)

    def test_chat_json_bytes_identical(self):
        _, up = self.check_passthrough("/v1/chat/completions", CHAT_REQ % ("gpt-4.1", "false"),
                                       json_scene(CHAT_JSON), CHAT_JSON, "application/json",
                                       {"Content-Type": "application/json",
                                        "Authorization": "Bearer " + CLIENT_KEY})
        self.check_chat_upstream(up)

    # -- OpenAI Responses (supplier `rs`, header auth) ---------------

    def check_responses_upstream(self, up):
        self.assertEqual(up["path"], "/v1/responses")
        self.assertEqual(header_values(up, "x-api-key"), ["sk-upstream-secret-rs"])
        self.assertEqual(header_values(up, "authorization"), [])
        self.assert_no_client_key(up)

    def test_codex_stream_bytes_identical(self):
        _, up = self.check_passthrough("/v1/responses", RESPONSES_REQ % "true", stream_scene(RESPONSES_SSE),
                                       RESPONSES_SSE, "text/event-stream",
                                       {"Content-Type": "application/json",
                                        "Authorization": "Bearer " + CLIENT_KEY})
        self.check_responses_upstream(up)

    def test_codex_json_bytes_identical(self):
        _, up = self.check_passthrough("/v1/responses", RESPONSES_REQ % "false", json_scene(RESPONSES_JSON),
                                       RESPONSES_JSON, "application/json",
                                       {"Content-Type": "application/json",
                                        "Authorization": "Bearer " + CLIENT_KEY})
        self.check_responses_upstream(up)

    # -- Gemini (supplier `gm`, no auth) -----------------------------

    def check_gemini_upstream(self, up, method_path):
        self.assertEqual(up["path"], method_path)
        self.assertEqual(header_values(up, "x-goog-api-key"), [])
        self.assertEqual(header_values(up, "authorization"), [])
        self.assert_no_client_key(up)

    def test_gemini_stream_bytes_identical(self):
        path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        r, up = self.check_passthrough(path, GEMINI_REQ, stream_scene(GEMINI_SSE), GEMINI_SSE,
                                       "text/event-stream",
                                       {"Content-Type": "application/json", "x-goog-api-key": CLIENT_KEY})
        self.check_gemini_upstream(up, path)
        self.assertEqual(len(harness.parse_sse(r.body)), 3)

    def test_gemini_json_bytes_identical(self):
        path = "/v1beta/models/gemini-2.5-flash:generateContent"
        _, up = self.check_passthrough(path, GEMINI_REQ, json_scene(GEMINI_JSON), GEMINI_JSON,
                                       "application/json",
                                       {"Content-Type": "application/json", "x-goog-api-key": CLIENT_KEY})
        self.check_gemini_upstream(up, path)

    # -- streaming is streaming -------------------------------------

    def test_stream_events_arrive_before_upstream_finishes(self):
        # The first event must reach the client while the upstream is still
        # holding back the rest (a buffering proxy would fail this).
        first, rest = ANTHROPIC_SSE.split("\n\n", 1)
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": first + "\n\n"}, {"data": rest, "delay_ms": 3000}]})
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(build_request("POST", "/v1/messages", ANTHROPIC_REQ % "true",
                             self.anthropic_headers(), self.sluice.port))
        c.read_until(b"\r\n\r\n", timeout=2.0)
        t0 = time.monotonic()
        c.read_until(b"event: message_start", timeout=2.0)
        self.assertLess(time.monotonic() - t0, 2.0)
        self.assertNotIn(b"message_stop", c.buf)
        c.read_until(b"event: message_stop", timeout=10.0)

    # -- paths -------------------------------------------------------

    def test_prefixed_and_extra_paths_reach_the_right_upstream_path(self):
        cases = [
            ("/claude/v1/messages", ANTHROPIC_REQ % "false", "/v1/messages"),
            ("/v1/messages/count_tokens", ANTHROPIC_REQ % "false", "/v1/messages/count_tokens"),
            ("/claude/v1/messages/count_tokens", ANTHROPIC_REQ % "false", "/v1/messages/count_tokens"),
            ("/chat/v1/chat/completions", CHAT_REQ % ("gpt-4.1", "false"), "/v1/chat/completions"),
            ("/codex/v1/responses", RESPONSES_REQ % "false", "/v1/responses"),
            ("/codex/responses", RESPONSES_REQ % "false", "/v1/responses"),
            ("/gemini/v1beta/models/gemini-2.5-pro:generateContent", GEMINI_REQ,
             "/v1beta/models/gemini-2.5-pro:generateContent"),
            ("/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", GEMINI_REQ,
             "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"),
        ]
        for client_path, body, upstream_path in cases:
            with self.subTest(path=client_path):
                self.mock.reset()
                self.mock.enqueue(json_scene('{"ok":true}'))
                r = self.post(client_path, body, headers={"Content-Type": "application/json",
                                                          "anthropic-version": "2023-06-01"})
                self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
                self.assertEqual(r.body, b'{"ok":true}')
                self.assertEqual(self.only_request()["path"], upstream_path)

    # -- model rewrite -----------------------------------------------

    def test_model_rewrite_reencodes_body_losslessly(self):
        self.mock.enqueue(json_scene(CHAT_JSON))
        sent = CHAT_REQ % ("gpt-4.1-alias", "false")
        r = self.post("/v1/chat/completions", sent, headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        up = self.only_request()
        self.assertEqual(up["path"], "/v1/chat/completions")
        got = json.loads(up["body"])
        want = json.loads(sent)
        want["model"] = "gpt-4.1"
        # Same document apart from the model: empty arrays stay arrays, the
        # 20-digit seed stays exact.
        self.assertEqual(got, want)
        self.assertEqual(got["seed"], 12345678901234567890)
        self.assertEqual(got["tools"][0]["function"]["parameters"]["required"], [])

    def test_a_large_agent_body_passes_unchanged_whether_scanned_or_decoded_whole(self):
        # A coding agent's request: a long conversation of tool calls and code,
        # `model` and `stream` last. sluice scans such a body instead of decoding
        # it, and decodes the next one whole after a request of the same service
        # read all of its body (here the alias, whose model is rewritten): the
        # bytes that reach the supplier are the client's either way.
        turns = [{"role": "system", "content": "You are a coding agent."},
                 {"role": "user", "content": "Fix the failing test in caf\u00e9.py"}]
        code = 'def f(x):\n    return "\\\\d+\\t" + x  # caf\u00e9 \u2603 \U0001f600\n' * 40
        for i in range(120):
            turns.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_%d" % i, "type": "function",
                 "function": {"name": "read_file", "arguments": json.dumps({"path": "src/m%d.py" % i})}}]})
            turns.append({"role": "tool", "tool_call_id": "call_%d" % i, "content": code})
        big = json.dumps({"messages": turns, "tools": [], "model": "gpt-4.1", "stream": True})
        self.assertGreater(len(big), 300_000)
        headers = {"Content-Type": "application/json", "Authorization": "Bearer " + CLIENT_KEY}

        def passes_unchanged():
            self.mock.enqueue(stream_scene(CHAT_SSE))
            r = self.post("/v1/chat/completions", big, headers=headers)
            self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
            self.assert_bytes_equal(r.body, CHAT_SSE, "streamed answer")
            reqs = self.mock.requests()
            self.assert_bytes_equal(reqs[-1]["body_bytes"], big.encode("utf-8"), "upstream request body")
            return len(reqs)

        self.assertEqual(passes_unchanged(), 1)
        self.mock.enqueue(json_scene(CHAT_JSON))  # the alias: its body is decoded whole and re-encoded
        r = self.post("/v1/chat/completions", CHAT_REQ % ("gpt-4.1-alias", "false"), headers=headers)
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(passes_unchanged(), 3)
        # a body cut short is refused whole, in the client's shape, and goes nowhere
        for cut in (big[:-1], big[:len(big) // 2]):
            r = self.post("/v1/chat/completions", cut, headers=headers)
            self.assertEqual(r.status, 400)
            self.assertIn("request body is not a JSON object: json: unexpected end of input",
                          r.json()["error"]["message"])
        self.assertEqual(len(self.mock.requests()), 3)

    def test_gemini_model_rewrite_is_in_the_path(self):
        self.mock.enqueue(json_scene(GEMINI_JSON))
        r = self.post("/v1beta/models/gemini-alias:generateContent", GEMINI_REQ,
                      headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        up = self.only_request()
        self.assertEqual(up["path"], "/v1beta/models/gemini-2.5-flash:generateContent")
        self.assertEqual(json.loads(up["body"]), json.loads(GEMINI_REQ))

    # -- headers -----------------------------------------------------

    def test_hop_by_hop_headers_dropped_end_to_end(self):
        self.mock.enqueue({"headers": {"Content-Type": "application/json", "Keep-Alive": "timeout=99",
                                       "X-Upstream-Trace": "t-1"},
                           "body": CHAT_JSON})
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(build_request("POST", "/v1/chat/completions", CHAT_REQ % ("gpt-4.1", "false"),
                             {"Content-Type": "application/json", "Keep-Alive": "timeout=5",
                              "TE": "trailers", "Proxy-Authorization": "Basic c2VjcmV0",
                              "X-Client-Trace": "c-1"}, self.sluice.port))
        resp = c.read_response()
        self.assertEqual(resp.status, 200, "%r%s" % (resp, self.diag()))
        self.assertEqual(resp.body, CHAT_JSON.encode())
        self.assertIsNone(resp.header("keep-alive"), "upstream Keep-Alive leaked to the client")
        up = self.only_request()
        for name in ("keep-alive", "te", "proxy-authorization"):
            self.assertEqual(header_values(up, name), [], "%s forwarded upstream" % name)
        self.assertEqual(header_values(up, "x-client-trace"), ["c-1"])

    # -- upstream errors ---------------------------------------------

    def test_upstream_error_status_and_body_pass_through(self):
        # Scenes repeat because sluice may retry 5xx before answering
        # (DESIGN §7); whatever it does, the client ends with the upstream's
        # status and body.
        overloaded = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
        self.mock.enqueue(dict(json_scene(overloaded, status=529), repeat=10))
        r = self.post("/v1/messages", ANTHROPIC_REQ % "true", headers=self.anthropic_headers())
        self.assertEqual(r.status, 529, "%r%s" % (r, self.diag()))
        self.assertEqual(r.json(), json.loads(overloaded))

        self.mock.reset()
        self.mock.enqueue(dict(json_scene('{"error":{"message":"boom","type":"server_error","code":null}}',
                                          status=500), repeat=10))
        r = self.post("/v1/chat/completions", CHAT_REQ % ("gpt-4.1", "false"))
        self.assertEqual(r.status, 500, "%r%s" % (r, self.diag()))
        self.assertEqual(r.json()["error"]["message"], "boom")

        self.mock.reset()
        self.mock.enqueue(dict(json_scene('{"error":{"code":503,"message":"busy","status":"UNAVAILABLE"}}',
                                          status=503), repeat=10))
        r = self.post("/v1beta/models/gemini-2.5-flash:generateContent", GEMINI_REQ)
        self.assertEqual(r.status, 503, "%r%s" % (r, self.diag()))
        self.assertEqual(r.json()["error"]["status"], "UNAVAILABLE")

    # -- keep-alive --------------------------------------------------

    def test_client_connection_reused(self):
        self.mock.enqueue([json_scene(CHAT_JSON), json_scene(CHAT_JSON)])
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        for _ in range(2):
            c.send(build_request("POST", "/v1/chat/completions", CHAT_REQ % ("gpt-4.1", "false"),
                                 {"Content-Type": "application/json"}, self.sluice.port))
            resp = c.read_response()
            self.assertEqual(resp.status, 200, "%r%s" % (resp, self.diag()))
            self.assertEqual(resp.body, CHAT_JSON.encode())
            self.assertNotEqual((resp.header("connection") or "").lower(), "close")
        self.assertFalse(c.is_closed_by_peer(0.3), "sluice closed a keep-alive connection")
        self.assertEqual(len(self.mock.requests()), 2)

    def test_upstream_connection_reused(self):
        # Two sequential requests on two separate client connections: the
        # upstream sees one connection (curl's pool), not two.
        for body in (ANTHROPIC_JSON, ANTHROPIC_JSON):
            self.mock.enqueue(json_scene(body))
            r = self.post("/v1/messages", ANTHROPIC_REQ % "false", headers=self.anthropic_headers())
            self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        reqs = self.mock.requests()
        self.assertEqual(len(reqs), 2)
        self.assertEqual(reqs[0]["conn_id"], reqs[1]["conn_id"], "upstream connection not reused")
        self.assertEqual(self.mock.stats()["connections_opened"], 1)

    # -- client abort ------------------------------------------------

    def test_client_abort_mid_stream_closes_upstream(self):
        first, _ = CHAT_SSE.split("\n\n", 1)
        tick = 'data: {"id":"chatcmpl-abc","object":"chat.completion.chunk","created":1,"model":"gpt-4.1",' \
               '"choices":[{"index":0,"delta":{"content":"."},"finish_reason":null}]}\n\n'
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": first + "\n\n"}] + [{"data": tick, "delay_ms": 200}] * 100})
        c = RawConn(self.sluice.port)
        c.send(build_request("POST", "/v1/chat/completions", CHAT_REQ % ("gpt-4.1", "true"),
                             {"Content-Type": "application/json"}, self.sluice.port))
        c.read_until(b'"role":"assistant"', timeout=5)
        c.close()
        gone = harness.wait_for(lambda: self.mock.requests()[0]["client_gone"], timeout=3)
        self.assertTrue(gone, "upstream still streaming 3 s after the client left" + self.diag())
        self.assertTrue(harness.wait_for(lambda: self.mock.stats()["open"] == 0, timeout=2))
        # And the worker carries on.
        self.mock.enqueue(json_scene(CHAT_JSON))
        r = self.post("/v1/chat/completions", CHAT_REQ % ("gpt-4.1", "false"))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, CHAT_JSON.encode())


class TranslationSmokeTest(harness.SluiceTestCase):
    """A route to a supplier of another protocol translates both ways (the
    detailed mapping is covered by the Lua specs; this proves the wiring)."""

    def setUp(self):
        super().setUp()
        self.start_sluice(routes='{ claude = { { match = "*", supplier = "xo" } } }')

    def check_upstream(self, stream):
        up = self.only_request()
        self.assertEqual(up["path"], "/v1/chat/completions")
        self.assertEqual(header_values(up, "authorization"), ["Bearer sk-upstream-secret-xo"])
        self.assertEqual(header_values(up, "x-api-key"), [])
        body = json.loads(up["body"])
        self.assertEqual(body["model"], "claude-sonnet-4-5")
        self.assertEqual(bool(body.get("stream")), stream)
        self.assertIn("Weather in Paris", json.dumps(body["messages"], ensure_ascii=False))
        self.assertEqual(body["tools"][0]["function"]["name"], "get_weather")
        self.assertEqual(body["tools"][0]["function"]["parameters"]["required"], [])

    def test_anthropic_client_openai_supplier_json(self):
        self.mock.enqueue(json_scene(CHAT_JSON))
        r = self.post("/v1/messages", ANTHROPIC_REQ % "false",
                      headers={"anthropic-version": "2023-06-01", "x-api-key": CLIENT_KEY})
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        msg = r.json()
        self.assertEqual(msg["type"], "message")
        self.assertEqual(msg["model"], "claude-sonnet-4-5", "model reported back must be the one asked for")
        self.assertEqual(msg["content"][0], {"type": "text", "text": "Sunny \u2600"})
        self.assertEqual(msg["stop_reason"], "end_turn")
        self.assertEqual(msg["usage"]["output_tokens"], 3)
        self.check_upstream(False)

    def test_anthropic_client_openai_supplier_stream(self):
        self.mock.enqueue(stream_scene(CHAT_SSE))
        r = self.post("/v1/messages", ANTHROPIC_REQ % "true",
                      headers={"anthropic-version": "2023-06-01", "x-api-key": CLIENT_KEY})
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertTrue((r.header("content-type") or "").startswith("text/event-stream"))
        events = harness.parse_sse(r.body)
        names = [e["event"] for e in events if e["event"] != "ping"]
        self.assertEqual(names[0], "message_start")
        self.assertEqual(names[-1], "message_stop")
        datas = [json.loads(e["data"]) for e in events]
        for e, d in zip(events, datas):
            self.assertEqual(e["event"], d["type"], "event name and data type disagree")
        text = "".join(d["delta"].get("text", "") for d in datas if d["type"] == "content_block_delta")
        self.assertEqual(text, "Check \u2603")
        tool = [d["content_block"] for d in datas if d["type"] == "content_block_start"
                and d["content_block"]["type"] == "tool_use"]
        self.assertEqual([(t["id"], t["name"], t["input"]) for t in tool], [("call_1", "get_weather", {})])
        args = "".join(d["delta"].get("partial_json", "") for d in datas if d["type"] == "content_block_delta")
        self.assertEqual(json.loads(args), {"city": "Paris"})
        delta = [d for d in datas if d["type"] == "message_delta"]
        self.assertEqual(delta[-1]["delta"]["stop_reason"], "tool_use")
        self.assertEqual(delta[-1]["usage"]["output_tokens"], 40)
        self.check_upstream(True)


if __name__ == "__main__":
    harness.main()
