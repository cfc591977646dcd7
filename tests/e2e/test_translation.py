"""test_translation — cross-protocol routes through the real binary.

Each test sends what a real client sends (Claude Code, Codex, Gemini CLI, an
OpenAI SDK) to a sluice whose route points at a supplier of another protocol,
has the mock upstream answer with what that supplier really puts on the wire
(streams cut at arbitrary byte offsets, so records arrive split across reads),
and checks what the client would notice: the stream parses, its events come
in the order the client's SDK requires, the text, tool calls (ids, names,
arguments reassembled from fragments), stop reason, usage and model are
right, the end is honest when the upstream dies early, and errors arrive in
the client's protocol's shape. It also checks that the upstream got a valid
request of its own protocol with the supplier's credentials, and that the
history record carries the usage and the outcome.

The codec mapping tables are covered in depth by the busted specs; these
tests prove the whole path: framing in C, the Lua hooks, the codecs, the
termination classifier and the record.
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import header_values, sse_chunks  # noqa: E402

CLIENT_KEY = "sk-client-key-must-not-leak-5512"
SUPPLIER_BEARER = "Bearer sk-upstream-secret-oa"

# ---------------------------------------------------------------- client requests

WEATHER_SCHEMA = {"type": "object",
                  "properties": {"city": {"type": "string"},
                                 "unit": {"type": "string", "enum": ["c", "f"]}},
                  "required": []}
CLOCK_SCHEMA = {"type": "object", "properties": {}, "required": []}

# What Claude Code sends: system blocks with cache_control, an earlier tool
# round trip, tools whose schemas have empty `required` arrays.
CLAUDE_REQ = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 2048,
    "stream": True,
    "system": [{"type": "text", "text": "You are a weather bot.",
                "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01PREV", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01PREV", "content": "12:00"},
            {"type": "text", "text": "Now the weather in Paris and Tokyo, caf\u00e9 \u2603"}]},
    ],
    "tools": [
        {"name": "get_weather", "description": "Current weather", "input_schema": WEATHER_SCHEMA},
        {"name": "get_time", "description": "Clock", "input_schema": CLOCK_SCHEMA},
    ],
    "metadata": {"user_id": "user_abc_account__session_1234"},
}


def claude_headers(rid=None):
    h = {"Content-Type": "application/json", "x-api-key": CLIENT_KEY,
         "anthropic-version": "2023-06-01",
         "anthropic-beta": "fine-grained-tool-streaming-2025-05-14"}
    if rid:
        h["x-request-id"] = rid
    return h


CODEX_REQ = {
    "model": "gpt-5-codex",
    "stream": True,
    "instructions": "You are Codex, a coding agent.",
    "input": [{"type": "message", "role": "user",
               "content": [{"type": "input_text", "text": "List the files, then read README \u00e9"}]}],
    "tools": [{"type": "function", "name": "shell", "description": "Run a command",
               "parameters": {"type": "object", "properties": {"command": {"type": "array",
                              "items": {"type": "string"}}}, "required": ["command"]},
               "strict": False}],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "store": False,
    "include": [],
    "prompt_cache_key": "codex-session-77",
}

GEMINI_REQ = {
    "contents": [{"role": "user", "parts": [{"text": "Weather in Paris? \u2603"}]}],
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "tools": [{"functionDeclarations": [{
        "name": "get_weather", "description": "Current weather",
        "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}},
                       "required": ["city"]}}]}],
    "generationConfig": {"temperature": 0.2, "maxOutputTokens": 512},
}

CHAT_REQ = {
    "model": "gpt-4o",
    "messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "Weather in Paris? \u2603"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                                "parameters": WEATHER_SCHEMA}}],
    "max_tokens": 300,
}

# ---------------------------------------------------------------- upstream wire bodies


def chat_chunk(delta=None, finish=None, usage=None, choices=True):
    c = {"id": "chatcmpl-9XyZ", "object": "chat.completion.chunk", "created": 1730000000,
         "model": "gpt-4.1-2025-04-14", "system_fingerprint": "fp_abc"}
    if choices:
        c["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
        c["usage"] = None
    else:
        c["choices"] = []
        c["usage"] = usage
    return "data: " + json.dumps(c, ensure_ascii=False) + "\n\n"


def tool_delta(index, args, call_id=None, name=None):
    tc = {"index": index, "function": {"arguments": args}}
    if call_id:
        tc["id"], tc["type"] = call_id, "function"
        tc["function"]["name"] = name
    return {"tool_calls": [tc]}


PARIS_ARGS = ['{"ci', 'ty": "Pa', 'ris", ', '"unit"', ': "c"', '}']
TOKYO_ARGS = ['{"city"', ': "Tok', 'yo \u6771\u4eac"}']
CHAT_USAGE = {"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290,
              "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0}}


def chat_tools_stream():
    """An OpenAI chat stream: text, two parallel tool calls whose arguments
    come in many fragments, finish_reason, the usage-only chunk, [DONE]."""
    s = chat_chunk({"role": "assistant", "content": "", "refusal": None})
    s += chat_chunk({"content": "Checking "})
    s += chat_chunk({"content": "both cities \u2603."})
    s += chat_chunk(tool_delta(0, "", "call_paris01", "get_weather"))
    for frag in PARIS_ARGS:
        s += chat_chunk(tool_delta(0, frag))
    s += chat_chunk(tool_delta(1, "", "call_tokyo02", "get_weather"))
    for frag in TOKYO_ARGS:
        s += chat_chunk(tool_delta(1, frag))
    s += chat_chunk({}, finish="tool_calls")
    s += chat_chunk(choices=False, usage=CHAT_USAGE)
    s += "data: [DONE]\n\n"
    return s


def chat_cut_stream():
    """The same stream, stopping right after the first tool call started."""
    s = chat_chunk({"role": "assistant", "content": ""})
    s += chat_chunk({"content": "Checking "})
    s += chat_chunk(tool_delta(0, "", "call_paris01", "get_weather"))
    s += chat_chunk(tool_delta(0, PARIS_ARGS[0]))
    return s


def anthropic_event(name, data):
    return "event: %s\ndata: %s\n\n" % (name, json.dumps(data, ensure_ascii=False))


def anthropic_tools_stream(text="I'll list the files.", tool_id="toolu_01LsX",
                           args=('{"comm', 'and": ["l', 's", "-la"]', '}'),
                           tool_name="shell"):
    """A real Anthropic stream: message_start (usage incl. cache), ping, a
    text block, a tool_use block with input_json_delta fragments,
    message_delta with stop_reason and usage, message_stop."""
    s = anthropic_event("message_start", {"type": "message_start", "message": {
        "id": "msg_01AbC", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100,
                  "output_tokens": 1, "service_tier": "standard"}}})
    s += anthropic_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}})
    s += anthropic_event("ping", {"type": "ping"})
    half = len(text) // 2
    for piece in (text[:half], text[half:]):
        s += anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                     "delta": {"type": "text_delta", "text": piece}})
    s += anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0})
    s += anthropic_event("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": tool_id, "name": tool_name, "input": {}}})
    s += anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 1,
                                                 "delta": {"type": "input_json_delta", "partial_json": ""}})
    for frag in args:
        s += anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 1,
                                                     "delta": {"type": "input_json_delta", "partial_json": frag}})
    s += anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 1})
    s += anthropic_event("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                           "usage": {"output_tokens": 30}})
    s += anthropic_event("message_stop", {"type": "message_stop"})
    return s


ANTHROPIC_MESSAGE = {
    "id": "msg_01JsOn", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Let me check \u2603."},
                {"type": "tool_use", "id": "toolu_01WeA", "name": "get_weather",
                 "input": {"city": "Paris", "unit": "c"}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 50, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 200,
              "output_tokens": 25}}

CHAT_COMPLETION = {
    "id": "chatcmpl-B1", "object": "chat.completion", "created": 1730000000, "model": "gpt-4.1-2025-04-14",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": "Checking both.", "refusal": None, "annotations": [],
        "tool_calls": [
            {"id": "call_p1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_t2", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Tokyo\",\"unit\":\"f\"}"}}]}}],
    "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940,
              "prompt_tokens_details": {"cached_tokens": 512}}}


def stream_scene(text, parts=9):
    # Arbitrary byte offsets: records, lines and UTF-8 sequences get cut.
    return {"status": 200, "headers": {"Content-Type": "text/event-stream"},
            "chunks": sse_chunks(text, parts=parts, delay_ms=10)}


def json_scene(obj, status=200, headers=None):
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return {"status": status, "headers": h, "body": json.dumps(obj, ensure_ascii=False)}


# ---------------------------------------------------------------- stream readers


class Stream:
    """What a client SDK would assemble from a stream."""

    def __init__(self):
        self.text = ""
        self.tools = []        # [{"id", "name", "args" (raw concatenated text)}]
        self.stop = None
        self.usage = None
        self.model = None
        self.error = None
        self.names = []


class TranslationCase(harness.SluiceTestCase):
    """Helpers: start sluice with history on, read records, and the four
    protocol stream validators (each fails the test on any malformed or
    out-of-order event, and returns a Stream)."""

    def start(self, routes, extra=""):
        self.db = os.path.join(tempfile.mkdtemp(prefix="sluice-tr-"), "history.db")
        extra = 'history = { path = "%s" },\n  retry = { attempts = 1 },\n%s' % (self.db, extra)
        return self.start_sluice(routes=routes, extra=extra)

    def record(self, rid):
        def get():
            r = harness.request(self.sluice.port, "GET", "/_sluice/requests/" + rid)
            return r if r.status == 200 else None
        r = harness.wait_for(get, timeout=5)
        self.assertIsNotNone(r, "no history record for %s%s" % (rid, self.diag()))
        return r.json()

    def assert_ok_sse(self, r):
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertTrue((r.header("content-type") or "").startswith("text/event-stream"),
                        "content-type %r" % r.header("content-type"))

    def upstream(self):
        up = self.only_request()
        for name, value in up["headers"]:
            self.assertNotIn(CLIENT_KEY, value, "client key forwarded upstream in %s" % name)
        return up, json.loads(up["body"])

    # -- Anthropic ---------------------------------------------------------

    def anthropic_stream(self, body):
        """Validates an Anthropic Messages stream the way the SDK consumes it."""
        events = harness.parse_sse(body)
        self.assertTrue(events, "empty stream")
        out = Stream()
        open_index, next_index, blocks = None, 0, []
        seen_delta = False
        for i, e in enumerate(events):
            d = json.loads(e["data"])
            t = d["type"]
            self.assertEqual(e["event"], t, "event name and data.type disagree at %d" % i)
            out.names.append(t)
            if i == 0:
                self.assertEqual(t, "message_start", "the stream must open with message_start")
                m = d["message"]
                self.assertEqual((m["type"], m["role"], m["content"], m["stop_reason"]),
                                 ("message", "assistant", [], None))
                self.assertTrue(m["id"].startswith("msg_"), m["id"])
                self.assertIn("usage", m, "message_start.message.usage is required")
                self.assertIsInstance(m["usage"]["input_tokens"], int)
                self.assertIsInstance(m["usage"]["output_tokens"], int)
                out.model = m["model"]
                continue
            self.assertNotEqual(t, "message_start", "second message_start")
            if t == "ping":
                continue
            if t == "content_block_start":
                self.assertIsNone(open_index, "block %d opened while block %s is open" % (d["index"], open_index))
                self.assertEqual(d["index"], next_index, "block indexes must be consecutive from 0")
                open_index = d["index"]
                cb = d["content_block"]
                if cb["type"] == "tool_use":
                    self.assertEqual(cb["input"], {}, "tool_use must start with input {}")
                    self.assertTrue(cb["id"] and cb["name"])
                    blocks.append({"type": "tool_use", "id": cb["id"], "name": cb["name"], "args": ""})
                else:
                    self.assertEqual(cb["type"], "text", cb)
                    self.assertEqual(cb["text"], "")
                    blocks.append({"type": "text", "text": ""})
            elif t == "content_block_delta":
                self.assertEqual(d["index"], open_index, "delta for a block that is not open")
                b, dl = blocks[-1], d["delta"]
                if b["type"] == "text":
                    self.assertEqual(dl["type"], "text_delta")
                    b["text"] += dl["text"]
                else:
                    self.assertEqual(dl["type"], "input_json_delta")
                    b["args"] += dl["partial_json"]
            elif t == "content_block_stop":
                self.assertEqual(d["index"], open_index, "stop for a block that is not open")
                open_index = None
                next_index += 1
            elif t == "message_delta":
                self.assertIsNone(open_index, "message_delta while a block is open")
                self.assertFalse(seen_delta, "two message_delta events")
                seen_delta = True
                out.stop = d["delta"]["stop_reason"]
                out.usage = d["usage"]
            elif t == "error":
                self.assertIsNone(open_index, "error while a block is still open")
                out.error = d["error"]
            elif t == "message_stop":
                self.assertEqual(i, len(events) - 1, "events after message_stop")
            else:
                self.fail("unexpected event %r" % t)
        self.assertEqual(out.names[-1], "message_stop", "the stream must end with message_stop")
        self.assertIsNone(open_index)
        for b in blocks:
            if b["type"] == "text":
                out.text += b["text"]
            else:
                out.tools.append(b)
        return out

    # -- OpenAI chat ---------------------------------------------------------

    def chat_stream(self, body):
        events = harness.parse_sse(body)
        self.assertTrue(events, "empty stream")
        self.assertEqual(events[-1]["data"], "[DONE]", "chat streams end with data: [DONE]")
        out, ids, tools = Stream(), set(), {}
        finished = False
        for e in events[:-1]:
            self.assertIsNone(e["event"], "chat streams have no event names")
            d = json.loads(e["data"])
            if "error" in d:
                out.error = d["error"]
                continue
            self.assertEqual(d["object"], "chat.completion.chunk")
            ids.add(d["id"])
            out.model = d["model"]
            if d.get("usage"):
                out.usage = d["usage"]
            if not d["choices"]:
                self.assertTrue(finished, "the usage-only chunk comes after the finish")
                continue
            self.assertFalse(finished, "a content chunk after finish_reason")
            ch = d["choices"][0]
            dl = ch["delta"]
            out.text += dl.get("content") or ""
            for tc in dl.get("tool_calls") or []:
                slot = tools.get(tc["index"])
                if slot is None:
                    self.assertEqual(tc["index"], len(tools), "tool_calls indexes count from 0")
                    self.assertTrue(tc.get("id") and tc["function"].get("name"),
                                    "the first delta of a tool call carries id and name")
                    slot = tools[tc["index"]] = {"id": tc["id"], "name": tc["function"]["name"], "args": ""}
                slot["args"] += tc["function"].get("arguments") or ""
            if ch.get("finish_reason"):
                out.stop = ch["finish_reason"]
                finished = True
        self.assertEqual(len(ids), 1, "every chunk carries the same id: %r" % ids)
        self.assertTrue(next(iter(ids)).startswith("chatcmpl-"))
        out.tools = [tools[k] for k in sorted(tools)]
        return out

    # -- OpenAI Responses ------------------------------------------------------

    def responses_stream(self, body):
        events = harness.parse_sse(body)
        self.assertTrue(events, "empty stream")
        out = Stream()
        datas = []
        for i, e in enumerate(events):
            d = json.loads(e["data"])
            self.assertEqual(e["event"], d["type"], "event name and data.type disagree at %d" % i)
            self.assertEqual(d["sequence_number"], i, "sequence_number counts events from 0")
            datas.append(d)
            out.names.append(d["type"])
        self.assertEqual(out.names[:2], ["response.created", "response.in_progress"])
        self.assertIsNone(datas[0]["response"]["usage"])
        terminal = [n for n in out.names if n in ("response.completed", "response.failed", "response.incomplete")]
        self.assertEqual(len(terminal), 1, "exactly one terminal event: %r" % out.names)
        self.assertEqual(out.names[-1], terminal[0], "the terminal event ends the stream")
        items, done_items, open_items = {}, {}, set()
        for d in datas[2:-1]:
            t = d["type"]
            if t == "response.output_item.added":
                oi = d["output_index"]
                self.assertNotIn(oi, items, "output_index reused")
                self.assertEqual(oi, len(items), "output_index counts items from 0")
                items[oi] = {"item": d["item"], "text": "", "args": ""}
                open_items.add(oi)
            elif t == "response.output_text.delta":
                self.assertIn(d["output_index"], open_items)
                self.assertEqual(d["item_id"], items[d["output_index"]]["item"]["id"])
                items[d["output_index"]]["text"] += d["delta"]
            elif t == "response.output_text.done":
                self.assertEqual(d["text"], items[d["output_index"]]["text"], "output_text.done text")
            elif t == "response.function_call_arguments.delta":
                self.assertIn(d["output_index"], open_items)
                items[d["output_index"]]["args"] += d["delta"]
            elif t == "response.function_call_arguments.done":
                self.assertEqual(d["arguments"], items[d["output_index"]]["args"],
                                 "arguments.done must equal the concatenated deltas")
            elif t == "response.output_item.done":
                oi = d["output_index"]
                self.assertIn(oi, open_items, "output_item.done for an item not open")
                open_items.discard(oi)
                done_items[oi] = d["item"]
                self.assertEqual(d["item"]["id"], items[oi]["item"]["id"])
        self.assertEqual(open_items, set(), "items left open at the end")
        final = datas[-1]["response"]
        self.assertTrue(final["id"].startswith("resp_"), final["id"])
        self.assertEqual(final["id"], datas[0]["response"]["id"])
        out.model = final.get("model")
        out.usage = final.get("usage")
        out.stop = final["status"]
        out.error = final.get("error")
        out.final = final
        self.assertEqual(final["output"], [done_items[k] for k in sorted(done_items)],
                         "the terminal event carries every finished output item")
        for it in final["output"]:
            if it["type"] == "message":
                out.text += "".join(c.get("text", "") for c in it["content"])
            elif it["type"] == "function_call":
                out.tools.append({"id": it["call_id"], "name": it["name"], "args": it["arguments"]})
        return out

    # -- Gemini ----------------------------------------------------------------

    def gemini_stream(self, body):
        events = harness.parse_sse(body)
        self.assertTrue(events, "empty stream")
        out = Stream()
        for i, e in enumerate(events):
            self.assertIsNone(e["event"], "Gemini streams have no event names")
            self.assertNotEqual(e["data"], "[DONE]", "Gemini streams have no [DONE]")
            d = json.loads(e["data"])
            if "error" in d:
                out.error = d["error"]
                self.assertEqual(i, len(events) - 1, "the error chunk is the last")
                continue
            if d.get("usageMetadata"):
                out.usage = d["usageMetadata"]
            out.model = d.get("modelVersion", out.model)
            cand = d["candidates"][0]
            self.assertIsNone(out.stop, "a chunk after the one with finishReason")
            for p in (cand.get("content") or {}).get("parts", []):
                if "functionCall" in p:
                    fc = p["functionCall"]
                    self.assertIsInstance(fc["args"], dict, "functionCall.args is an object")
                    out.tools.append({"id": fc.get("id"), "name": fc["name"], "args": fc["args"]})
                elif not p.get("thought"):
                    out.text += p.get("text", "")
            if cand.get("content"):
                self.assertEqual(cand["content"]["role"], "model")
            if cand.get("finishReason"):
                out.stop = cand["finishReason"]
        return out


# ==================================================================== Claude clients on an OpenAI chat supplier


CLAUDE_ON_OPENAI = '{ claude = { { match = "*", supplier = "oa", model = "gpt-4.1" } } }'


class ClaudeOnOpenAIStreamTest(TranslationCase):
    def setUp(self):
        super().setUp()
        self.start(CLAUDE_ON_OPENAI)

    def check_stream(self, path, rid):
        self.mock.enqueue(stream_scene(chat_tools_stream()))
        r = self.post(path, CLAUDE_REQ, headers=claude_headers(rid))
        self.assert_ok_sse(r)
        self.assertEqual(r.header("x-request-id"), rid)
        s = self.anthropic_stream(r.body)

        self.assertEqual(s.model, "claude-sonnet-4-5", "the model reported back is the one asked for")
        self.assertEqual(s.text, "Checking both cities \u2603.")
        self.assertEqual([(t["id"], t["name"]) for t in s.tools],
                         [("call_paris01", "get_weather"), ("call_tokyo02", "get_weather")])
        self.assertEqual(json.loads(s.tools[0]["args"]), {"city": "Paris", "unit": "c"})
        self.assertEqual(json.loads(s.tools[1]["args"]), {"city": "Tokyo \u6771\u4eac"})
        self.assertEqual(s.names.count("content_block_start"), 3)
        self.assertEqual(s.stop, "tool_use")
        self.assertIsNone(s.error)
        # OpenAI prompt_tokens include the cached ones; Anthropic's input_tokens do not.
        self.assertEqual(s.usage["output_tokens"], 56)
        self.assertEqual(s.usage.get("input_tokens"), 1234 - 1024)
        self.assertEqual(s.usage.get("cache_read_input_tokens"), 1024)

        up, body = self.upstream()
        self.assertEqual(up["path"], "/v1/chat/completions")
        self.assertEqual(header_values(up, "authorization"), [SUPPLIER_BEARER])
        self.assertEqual(header_values(up, "x-api-key"), [])
        self.assertEqual(header_values(up, "anthropic-version"), [])
        self.assertEqual(header_values(up, "accept-encoding"), ["identity"])
        self.assertEqual(header_values(up, "x-request-id"), [rid])
        self.check_openai_request(up, body)

        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["partial"], rec["status"]), ("COMPLETE", False, 200))
        self.assertEqual((rec["model_in"], rec["model_out"], rec["supplier"]),
                         ("claude-sonnet-4-5", "gpt-4.1", "oa"))
        self.assertEqual(rec["usage"]["input_tokens"], 1234)
        self.assertEqual(rec["usage"]["output_tokens"], 56)
        self.assertEqual(rec["usage"]["cache_read_tokens"], 1024)

    def check_openai_request(self, up, body):
        self.assertEqual(body["model"], "gpt-4.1", "the route rewrites the model")
        self.assertIs(body["stream"], True)
        self.assertEqual(body["stream_options"], {"include_usage": True})
        msgs = body["messages"]
        self.assertEqual(msgs[0]["role"], "system")
        self.assertIn("You are a weather bot.", json.dumps(msgs[0]["content"]))
        roles = [m["role"] for m in msgs]
        self.assertEqual(roles, ["system", "user", "assistant", "tool", "user"])
        self.assertEqual(msgs[2]["tool_calls"][0]["id"], "toolu_01PREV")
        self.assertEqual(msgs[2]["tool_calls"][0]["function"]["name"], "get_time")
        self.assertEqual(json.loads(msgs[2]["tool_calls"][0]["function"]["arguments"]), {})
        self.assertEqual(msgs[3]["tool_call_id"], "toolu_01PREV")
        self.assertIn("12:00", json.dumps(msgs[3]["content"]))
        self.assertIn("caf\u00e9 \u2603", json.dumps(msgs[4]["content"], ensure_ascii=False))
        tools = {t["function"]["name"]: t for t in body["tools"]}
        self.assertEqual(set(tools), {"get_weather", "get_time"})
        self.assertEqual(tools["get_weather"]["type"], "function")
        self.assertEqual(tools["get_weather"]["function"]["parameters"], WEATHER_SCHEMA)
        self.assertEqual(tools["get_time"]["function"]["parameters"], CLOCK_SCHEMA)
        # `required: []` must stay an array on the wire, `properties: {}` an object.
        raw = up["body"].replace(" ", "")
        self.assertIn('"required":[]', raw)
        self.assertIn('"properties":{}', raw)
        self.assertEqual(body.get("max_tokens", body.get("max_completion_tokens")), 2048)

    def test_bare_messages_path(self):
        self.check_stream("/v1/messages", "tr-claude-bare")

    def test_claude_prefixed_path(self):
        self.check_stream("/claude/v1/messages", "tr-claude-prefixed")

    def test_upstream_closes_after_first_tool_call_starts(self):
        rid = "tr-claude-cut"
        scene = stream_scene(chat_cut_stream(), parts=3)
        scene["close_after"] = True
        self.mock.enqueue(scene)
        r = self.post("/v1/messages", CLAUDE_REQ, headers=claude_headers(rid))
        self.assert_ok_sse(r)
        s = self.anthropic_stream(r.body)
        self.assertEqual(s.text, "Checking ")
        self.assertEqual([t["id"] for t in s.tools], ["call_paris01"])
        self.assertIsNone(s.stop, "a cut stream must not claim a stop reason (no message_delta)")
        self.assertNotIn("message_delta", s.names)
        self.assertEqual(s.names[-3:], ["content_block_stop", "error", "message_stop"])
        self.assertEqual(s.error["type"], "api_error")
        self.assertIn("UPSTREAM_EOF_EARLY", s.error["message"])
        rec = self.record(rid)
        self.assertEqual(rec["reason"], "UPSTREAM_EOF_EARLY")
        self.assertIs(rec["partial"], True)


if __name__ == "__main__":
    harness.main()
