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
import unittest

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
        self.thinking = []     # Anthropic thinking blocks: [{"text", "signature"}]
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

    def upstream(self, passthrough_auth=False):
        """The one upstream request and its JSON body. The client's key may
        appear only on a supplier with passthrough auth, and only once."""
        up = self.only_request()
        leaks = [name for name, value in up["headers"] if CLIENT_KEY in value]
        self.assertEqual(leaks, ["x-api-key"] if passthrough_auth else [],
                         "headers carrying the client's key upstream")
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
                elif cb["type"] == "thinking":
                    self.assertEqual(cb["thinking"], "")
                    blocks.append({"type": "thinking", "text": "", "signature": ""})
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
                elif b["type"] == "thinking":
                    self.assertIn(dl["type"], ("thinking_delta", "signature_delta"))
                    if dl["type"] == "thinking_delta":
                        self.assertEqual(b["signature"], "", "thinking text after its signature")
                        b["text"] += dl["thinking"]
                    else:
                        b["signature"] += dl["signature"]
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
            elif b["type"] == "thinking":
                out.thinking.append(b)
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
            elif t == "response.custom_tool_call_input.delta":
                self.assertIn(d["output_index"], open_items)
                items[d["output_index"]]["args"] += d["delta"]
            elif t == "response.custom_tool_call_input.done":
                self.assertEqual(d["input"], items[d["output_index"]]["args"],
                                 "custom_tool_call_input.done must equal the concatenated deltas")
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
            elif it["type"] == "custom_tool_call":
                out.tools.append({"id": it["call_id"], "name": it["name"], "input": it["input"]})
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



# ==================================================================== Codex on an Anthropic supplier


class CodexOnAnthropicTest(TranslationCase):
    def setUp(self):
        super().setUp()
        self.start('{ codex = { { match = "*", supplier = "an", model = "claude-sonnet-4-5" } } }')

    def test_responses_stream_from_anthropic_stream(self):
        rid = "tr-codex-stream"
        self.mock.enqueue(stream_scene(anthropic_tools_stream(text="I'll list the files \u2603.")))
        r = self.post("/v1/responses", CODEX_REQ,
                      headers={"Authorization": "Bearer " + CLIENT_KEY, "x-request-id": rid,
                               "OpenAI-Beta": "responses=experimental", "originator": "codex_cli_rs"})
        self.assert_ok_sse(r)
        s = self.responses_stream(r.body)
        self.assertEqual(s.stop, "completed")
        self.assertEqual(s.names[-1], "response.completed")
        self.assertEqual(s.model, "gpt-5-codex", "the model reported back is the one asked for")
        self.assertEqual(s.text, "I'll list the files \u2603.")
        self.assertEqual([(t["id"], t["name"]) for t in s.tools], [("toolu_01LsX", "shell")])
        self.assertEqual(json.loads(s.tools[0]["args"]), {"command": ["ls", "-la"]})
        self.assertEqual([it["type"] for it in s.final["output"]], ["message", "function_call"])
        for it in s.final["output"]:
            self.assertEqual(it["status"], "completed")
        # Anthropic input_tokens exclude the cache; Responses input_tokens include it.
        self.assertEqual(s.usage["input_tokens"], 120)
        self.assertEqual(s.usage["input_tokens_details"]["cached_tokens"], 100)
        self.assertEqual(s.usage["output_tokens"], 30)
        self.assertEqual(s.usage["total_tokens"], 150)

        up, body = self.upstream(passthrough_auth=True)
        self.assertEqual(up["path"], "/v1/messages")
        # passthrough auth across protocols: the client's key, in Anthropic's header.
        self.assertEqual(header_values(up, "x-api-key"), [CLIENT_KEY])
        self.assertEqual(header_values(up, "authorization"), [])
        self.assertEqual(header_values(up, "anthropic-version"), ["2023-06-01"])
        self.assertEqual(header_values(up, "openai-beta"), [], "client protocol headers stay behind")
        self.assertEqual(body["model"], "claude-sonnet-4-5")
        self.assertIs(body["stream"], True)
        self.assertIsInstance(body["max_tokens"], int, "Anthropic requires max_tokens")
        self.assertIn("You are Codex", json.dumps(body["system"]))
        self.assertEqual([m["role"] for m in body["messages"]], ["user"])
        self.assertIn("README \u00e9", json.dumps(body["messages"], ensure_ascii=False))
        self.assertEqual(body["tools"][0]["name"], "shell")
        self.assertEqual(body["tools"][0]["input_schema"]["required"], ["command"])
        self.assertEqual(body["tool_choice"].get("type"), "auto")
        self.assertIs(body["tool_choice"].get("disable_parallel_tool_use"), True)

        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["partial"]), ("COMPLETE", False))
        self.assertEqual((rec["usage"]["input_tokens"], rec["usage"]["output_tokens"]), (120, 30))

    def test_custom_apply_patch_tool(self):
        """Codex sends apply_patch as a custom (freeform) tool and its earlier
        calls as custom_tool_call items; Claude must get it as a tool, and a
        call to it must come back as a custom_tool_call Codex can run."""
        patch = "*** Begin Patch\n*** Add File: hello.txt\n+Hello \"world\" \u2603\n*** End Patch\n"
        req = json.loads(json.dumps(CODEX_REQ))
        req["tools"].append({"type": "custom", "name": "apply_patch", "description": "Use apply_patch to edit files.",
                             "format": {"type": "grammar", "syntax": "lark",
                                        "definition": "start: begin_patch hunk+ end_patch"}})
        req["input"] += [
            {"type": "custom_tool_call", "id": "ctc_old", "call_id": "call_old", "name": "apply_patch",
             "input": "*** Begin Patch\n*** Delete File: x\n*** End Patch\n"},
            {"type": "custom_tool_call_output", "call_id": "call_old", "output": "Success. Updated: D x"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "now add hello.txt"}]}]
        args = json.dumps({"input": patch}, ensure_ascii=False)
        self.mock.enqueue(stream_scene(anthropic_tools_stream(
            text="Adding it.", tool_id="toolu_01Pt", tool_name="apply_patch",
            args=(args[:9], args[9:30], args[30:]))))
        r = self.post("/v1/responses", req, headers={"Authorization": "Bearer " + CLIENT_KEY})
        self.assert_ok_sse(r)
        s = self.responses_stream(r.body)
        self.assertEqual(s.stop, "completed")
        self.assertEqual(s.text, "Adding it.")
        self.assertEqual(s.tools, [{"id": "toolu_01Pt", "name": "apply_patch", "input": patch}])
        self.assertEqual([it["type"] for it in s.final["output"]], ["message", "custom_tool_call"])

        _, body = self.upstream(passthrough_auth=True)
        tools = {t["name"]: t for t in body["tools"]}
        self.assertEqual(set(tools), {"shell", "apply_patch"})
        schema = tools["apply_patch"]["input_schema"]
        self.assertEqual((schema["properties"]["input"]["type"], schema["required"]), ("string", ["input"]))
        self.assertIn("begin_patch hunk+", tools["apply_patch"]["description"])
        uses = [(m["role"], b) for m in body["messages"] for b in m["content"] if b.get("type") == "tool_use"]
        self.assertEqual(uses, [("assistant", {"type": "tool_use", "id": "call_old", "name": "apply_patch",
                                               "input": {"input": "*** Begin Patch\n*** Delete File: x\n*** End Patch\n"}})])
        results = [b for m in body["messages"] for b in m["content"] if b.get("type") == "tool_result"]
        self.assertEqual([b["tool_use_id"] for b in results], ["call_old"])

    def test_cut_anthropic_stream_is_response_failed(self):
        rid = "tr-codex-cut"
        whole = anthropic_tools_stream()
        cut = whole[:whole.index("event: content_block_stop\ndata: {\"type\": \"content_block_stop\", \"index\": 1")]
        scene = stream_scene(cut, parts=4)
        scene["close_after"] = True
        self.mock.enqueue(scene)
        r = self.post("/v1/responses", CODEX_REQ,
                      headers={"Authorization": "Bearer " + CLIENT_KEY, "x-request-id": rid})
        self.assert_ok_sse(r)
        s = self.responses_stream(r.body)
        self.assertEqual(s.names[-1], "response.failed")
        self.assertEqual(s.stop, "failed")
        self.assertIn("UPSTREAM_EOF_EARLY", s.error["message"])
        self.assertNotIn("response.completed", s.names)
        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["partial"]), ("UPSTREAM_EOF_EARLY", True))


# ==================================================================== Gemini CLI on an OpenAI chat supplier


class GeminiOnOpenAITest(TranslationCase):
    def setUp(self):
        super().setUp()
        self.start('{ gemini = { { match = "*", supplier = "oa", model = "gpt-4.1" } } }')

    def upstream_stream(self):
        s = chat_chunk({"role": "assistant", "content": ""})
        s += chat_chunk({"content": "Let me "})
        s += chat_chunk({"content": "look \u2603."})
        s += chat_chunk(tool_delta(0, "", "call_g1", "get_weather"))
        for frag in ['{"ci', 'ty":', ' "Paris"}']:
            s += chat_chunk(tool_delta(0, frag))
        s += chat_chunk({}, finish="tool_calls")
        s += chat_chunk(choices=False, usage={"prompt_tokens": 300, "completion_tokens": 21,
                                              "total_tokens": 321,
                                              "prompt_tokens_details": {"cached_tokens": 128}})
        return s + "data: [DONE]\n\n"

    def test_stream_generate_content(self):
        rid = "tr-gemini-stream"
        self.mock.enqueue(stream_scene(self.upstream_stream()))
        r = self.post("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", GEMINI_REQ,
                      headers={"x-goog-api-key": CLIENT_KEY, "x-request-id": rid,
                               "User-Agent": "GeminiCLI/0.1.0"})
        self.assert_ok_sse(r)
        s = self.gemini_stream(r.body)
        self.assertIsNone(s.error)
        self.assertEqual(s.text, "Let me look \u2603.")
        self.assertEqual([(t["name"], t["args"]) for t in s.tools], [("get_weather", {"city": "Paris"})])
        self.assertEqual(s.stop, "STOP")
        self.assertEqual(s.usage["promptTokenCount"], 300)
        self.assertEqual(s.usage["cachedContentTokenCount"], 128)
        self.assertEqual(s.usage["candidatesTokenCount"], 21)
        self.assertEqual(s.usage["totalTokenCount"], 321)
        self.assertEqual(s.model, "gemini-2.5-pro", "modelVersion is the model the client asked for")

        up, body = self.upstream()
        self.assertEqual(up["path"], "/v1/chat/completions")
        self.assertEqual(header_values(up, "authorization"), [SUPPLIER_BEARER])
        self.assertEqual(header_values(up, "x-goog-api-key"), [])
        self.assertEqual(body["model"], "gpt-4.1")
        self.assertIs(body["stream"], True)
        self.assertEqual(body["stream_options"], {"include_usage": True})
        self.assertEqual([m["role"] for m in body["messages"]], ["system", "user"])
        params = body["tools"][0]["function"]["parameters"]
        self.assertEqual(params["type"].lower(), "object")
        self.assertEqual(params["required"], ["city"])
        self.assertEqual(body.get("max_tokens", body.get("max_completion_tokens")), 512)

        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["partial"]), ("COMPLETE", False))
        self.assertEqual(rec["usage"]["input_tokens"], 300)
        self.assertEqual(rec["usage"]["output_tokens"], 21)


# ==================================================================== OpenAI chat clients on an Anthropic supplier


class ChatOnAnthropicTest(TranslationCase):
    def setUp(self):
        super().setUp()
        self.start('{ chat = { { match = "*", supplier = "an", model = "claude-sonnet-4-5" } } }')

    def check_upstream(self, stream):
        up, body = self.upstream(passthrough_auth=True)
        self.assertEqual(up["path"], "/v1/messages")
        self.assertEqual(header_values(up, "x-api-key"), [CLIENT_KEY])
        self.assertEqual(header_values(up, "anthropic-version"), ["2023-06-01"])
        self.assertEqual(body["model"], "claude-sonnet-4-5")
        self.assertEqual(bool(body.get("stream")), stream)
        self.assertEqual(body["max_tokens"], 300)
        self.assertIn("Be brief.", json.dumps(body["system"]))
        self.assertEqual([m["role"] for m in body["messages"]], ["user"])
        self.assertEqual(body["tools"][0]["input_schema"], WEATHER_SCHEMA)
        self.assertIn('"required":[]', up["body"].replace(" ", ""))

    def test_stream(self):
        rid = "tr-chat-stream"
        self.mock.enqueue(stream_scene(anthropic_tools_stream(
            text="Let me check \u2603.", tool_id="toolu_01WeA", tool_name="get_weather",
            args=('{"city"', ': "Paris"', ', "unit": "c"}'))))
        req = dict(CHAT_REQ, stream=True, stream_options={"include_usage": True})
        r = self.post("/v1/chat/completions", req,
                      headers={"Authorization": "Bearer " + CLIENT_KEY, "x-request-id": rid})
        self.assert_ok_sse(r)
        s = self.chat_stream(r.body)
        self.assertIsNone(s.error)
        self.assertEqual(s.model, "gpt-4o", "the model reported back is the one asked for")
        self.assertEqual(s.text, "Let me check \u2603.")
        self.assertEqual([(t["id"], t["name"]) for t in s.tools], [("toolu_01WeA", "get_weather")])
        self.assertEqual(json.loads(s.tools[0]["args"]), {"city": "Paris", "unit": "c"})
        self.assertEqual(s.stop, "tool_calls")
        self.assertEqual(s.usage["prompt_tokens"], 120)
        self.assertEqual(s.usage["prompt_tokens_details"]["cached_tokens"], 100)
        self.assertEqual(s.usage["completion_tokens"], 30)
        self.assertEqual(s.usage["total_tokens"], 150)
        self.check_upstream(True)
        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["partial"]), ("COMPLETE", False))
        self.assertEqual((rec["usage"]["input_tokens"], rec["usage"]["output_tokens"]), (120, 30))

    def test_stream_without_include_usage_has_no_usage_chunk(self):
        self.mock.enqueue(stream_scene(anthropic_tools_stream()))
        r = self.post("/v1/chat/completions", dict(CHAT_REQ, stream=True),
                      headers={"Authorization": "Bearer " + CLIENT_KEY})
        self.assert_ok_sse(r)
        s = self.chat_stream(r.body)
        self.assertEqual(s.stop, "tool_calls")
        self.assertIsNone(s.usage, "usage chunks only when the client asked for them")

    def test_json(self):
        rid = "tr-chat-json"
        self.mock.enqueue(json_scene(ANTHROPIC_MESSAGE))
        r = self.post("/v1/chat/completions", CHAT_REQ,
                      headers={"Authorization": "Bearer " + CLIENT_KEY, "x-request-id": rid})
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertTrue((r.header("content-type") or "").startswith("application/json"))
        c = r.json()
        self.assertEqual(c["object"], "chat.completion")
        self.assertTrue(c["id"].startswith("chatcmpl-"), c["id"])
        self.assertEqual(c["model"], "gpt-4o", "the model reported back is the one asked for")
        ch = c["choices"][0]
        self.assertEqual(ch["finish_reason"], "tool_calls")
        msg = ch["message"]
        self.assertEqual(msg["role"], "assistant")
        self.assertEqual(msg["content"], "Let me check \u2603.")
        self.assertEqual(len(msg["tool_calls"]), 1)
        tc = msg["tool_calls"][0]
        self.assertEqual((tc["id"], tc["type"], tc["function"]["name"]), ("toolu_01WeA", "function", "get_weather"))
        self.assertIsInstance(tc["function"]["arguments"], str, "chat arguments are a JSON string")
        self.assertEqual(json.loads(tc["function"]["arguments"]), {"city": "Paris", "unit": "c"})
        u = c["usage"]
        self.assertEqual(u["prompt_tokens"], 260)   # 50 + 10 written + 200 read
        self.assertEqual(u["prompt_tokens_details"]["cached_tokens"], 200)
        self.assertEqual(u["completion_tokens"], 25)
        self.assertEqual(u["total_tokens"], 285)
        self.check_upstream(False)
        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["partial"], rec["status"]), ("COMPLETE", False, 200))
        self.assertEqual((rec["usage"]["input_tokens"], rec["usage"]["output_tokens"]), (260, 25))


# ==================================================================== errors


class ErrorTranslationTest(TranslationCase):
    def setUp(self):
        super().setUp()
        self.start(CLAUDE_ON_OPENAI)

    def check_error(self, status, upstream_error, want_status, want_type, headers=None):
        self.mock.enqueue(json_scene({"error": upstream_error}, status=status, headers=headers))
        r = self.post("/v1/messages", CLAUDE_REQ, headers=claude_headers())
        self.assertEqual(r.status, want_status, "%r%s" % (r, self.diag()))
        self.assertTrue((r.header("content-type") or "").startswith("application/json"))
        e = r.json()
        self.assertEqual(e["type"], "error")
        self.assertEqual(e["error"]["type"], want_type)
        self.assertIn(upstream_error["message"], e["error"]["message"])
        self.assertEqual(len(self.mock.requests()), 1)
        return r

    def test_rate_limit_429(self):
        self.check_error(429, {"message": "Rate limit reached for gpt-4.1 on tokens per min (TPM): "
                                          "Limit 30000, Used 29000, Requested 2000.",
                               "type": "tokens", "param": None, "code": "rate_limit_exceeded"},
                         429, "rate_limit_error", headers={"retry-after": "20"})

    def test_invalid_request_400(self):
        self.check_error(400, {"message": "Invalid 'messages[3].tool_call_id': string too long.",
                               "type": "invalid_request_error", "param": "messages[3].tool_call_id",
                               "code": "string_above_max_length"},
                         400, "invalid_request_error")

    def test_auth_401(self):
        self.check_error(401, {"message": "Incorrect API key provided: sk-upstr***-oa.",
                               "type": "invalid_request_error", "param": None, "code": "invalid_api_key"},
                         401, "authentication_error")

    def test_in_stream_error(self):
        rid = "tr-claude-instream"
        s = chat_chunk({"role": "assistant", "content": ""})
        s += chat_chunk({"content": "Partial answ"})
        s += 'data: {"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}\n\n'
        self.mock.enqueue(stream_scene(s, parts=2))
        r = self.post("/v1/messages", CLAUDE_REQ, headers=claude_headers(rid))
        self.assert_ok_sse(r)
        st = self.anthropic_stream(r.body)
        self.assertEqual(st.text, "Partial answ")
        self.assertIsNotNone(st.error, "the upstream's in-stream error must reach the client")
        self.assertIn("The server had an error while processing your request", st.error["message"])
        self.assertIn(st.error["type"], ("api_error", "overloaded_error"))
        self.assertIsNone(st.stop, "an errored stream claims no stop reason")
        self.assertEqual(st.names[-2:], ["error", "message_stop"])
        rec = self.record(rid)
        self.assertNotEqual(rec["reason"], "COMPLETE", "an in-stream error is not a complete answer")

    def test_in_stream_error_for_chat_client_on_anthropic(self):
        self.sluice.cleanup()
        self.start('{ chat = { { match = "*", supplier = "an", model = "claude-sonnet-4-5" } } }')
        s = anthropic_event("message_start", {"type": "message_start", "message": {
            "id": "msg_01E", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1}}})
        s += anthropic_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                     "content_block": {"type": "text", "text": ""}})
        s += anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                     "delta": {"type": "text_delta", "text": "Hal"}})
        s += anthropic_event("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                  "message": "Overloaded"}})
        self.mock.enqueue(stream_scene(s, parts=3))
        r = self.post("/v1/chat/completions", dict(CHAT_REQ, stream=True),
                      headers={"Authorization": "Bearer " + CLIENT_KEY})
        self.assert_ok_sse(r)
        st = self.chat_stream(r.body)
        self.assertEqual(st.text, "Hal")
        self.assertIsNotNone(st.error)
        self.assertIn("Overloaded", st.error["message"])
        self.assertIsNone(st.stop, "no finish_reason on an errored stream")


# ==================================================================== non-stream Claude, count_tokens


class ClaudeOnOpenAIJsonTest(TranslationCase):
    def setUp(self):
        super().setUp()
        self.start(CLAUDE_ON_OPENAI)

    def test_json_answer(self):
        rid = "tr-claude-json"
        self.mock.enqueue(json_scene(CHAT_COMPLETION))
        r = self.post("/v1/messages", dict(CLAUDE_REQ, stream=False), headers=claude_headers(rid))
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertTrue((r.header("content-type") or "").startswith("application/json"))
        m = r.json()
        self.assertEqual((m["type"], m["role"]), ("message", "assistant"))
        self.assertTrue(m["id"].startswith("msg_"), m["id"])
        self.assertEqual(m["model"], "claude-sonnet-4-5")
        self.assertEqual(m["stop_reason"], "tool_use")
        self.assertEqual(m["content"][0], {"type": "text", "text": "Checking both."})
        tools = [(b["type"], b["id"], b["name"], b["input"]) for b in m["content"][1:]]
        self.assertEqual(tools, [("tool_use", "call_p1", "get_weather", {"city": "Paris"}),
                                 ("tool_use", "call_t2", "get_weather", {"city": "Tokyo", "unit": "f"})])
        self.assertEqual(m["usage"]["input_tokens"], 900 - 512)
        self.assertEqual(m["usage"]["cache_read_input_tokens"], 512)
        self.assertEqual(m["usage"]["output_tokens"], 40)

        up, body = self.upstream()
        self.assertEqual(up["path"], "/v1/chat/completions")
        self.assertEqual(header_values(up, "authorization"), [SUPPLIER_BEARER])
        self.assertFalse(body.get("stream"), "a JSON client gets a JSON upstream request")
        self.assertNotIn("stream_options", body)
        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["partial"], rec["status"]), ("COMPLETE", False, 200))
        self.assertEqual((rec["usage"]["input_tokens"], rec["usage"]["output_tokens"]), (900, 40))

    def test_count_tokens_is_estimated_locally(self):
        def count(req):
            r = self.post("/v1/messages/count_tokens", req, headers=claude_headers())
            self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
            self.assertEqual(r.header("x-sluice-token-estimate"), "chars/4")
            body = r.json()
            self.assertEqual(list(body), ["input_tokens"], "exactly Anthropic's documented shape")
            self.assertIsInstance(body["input_tokens"], int)
            return body["input_tokens"]

        small_req = {k: v for k, v in CLAUDE_REQ.items() if k not in ("stream", "max_tokens")}
        small = count(small_req)
        big_req = dict(small_req, messages=small_req["messages"] + [
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "word " * 4000}])
        big = count(big_req)
        self.assertGreater(small, 20)
        # 20000 more characters is about 5000 more tokens at four characters a token.
        self.assertTrue(4500 <= big - small <= 5500, (small, big))
        self.assertEqual(self.mock.requests(), [], "count_tokens never reaches a non-Anthropic supplier")



# ==================================================================== Claude clients on Gemini and Responses suppliers


def gemini_chunk(parts, finish=None, usage=None):
    c = {"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
         "modelVersion": "gemini-2.5-flash", "responseId": "gRsp1"}
    if finish:
        c["candidates"][0]["finishReason"] = finish
    if usage:
        c["usageMetadata"] = usage
    # Google separates records with CRLF.
    return "data: " + json.dumps(c, ensure_ascii=False) + "\r\n\r\n"


def gemini_tools_stream():
    """Thought text, answer text, then text and two functionCalls in one chunk
    (the first carrying a thoughtSignature), then the finish chunk."""
    s = gemini_chunk([{"text": "**Planning**", "thought": True}],
                     usage={"promptTokenCount": 40, "totalTokenCount": 40})
    s += gemini_chunk([{"text": "Checking"}])
    s += gemini_chunk([{"text": " both."},
                       {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "c2lnbmF0dXJlMQ=="},
                       {"functionCall": {"name": "get_weather", "args": {"city": "Tokyo", "unit": "c"}}}])
    s += gemini_chunk([{"text": ""}], finish="STOP",
                      usage={"promptTokenCount": 40, "candidatesTokenCount": 12, "thoughtsTokenCount": 7,
                             "totalTokenCount": 59, "cachedContentTokenCount": 8})
    return s


def responses_event(seq, t, **kw):
    d = {"type": t, "sequence_number": seq}
    d.update(kw)
    return "event: %s\ndata: %s\n\n" % (t, json.dumps(d, ensure_ascii=False))


def responses_reasoning_call_stream():
    """A real Responses stream from a reasoning model: a reasoning item with a
    summary and encrypted_content, then a function call."""
    base = {"id": "resp_0a1", "object": "response", "status": "in_progress", "model": "gpt-5-2025-08-07",
            "output": [], "usage": None}
    rs = {"type": "reasoning", "id": "rs_0a1", "summary": [{"type": "summary_text", "text": "Need weather."}],
          "encrypted_content": "gAAAAABoEnc=="}
    fc = {"type": "function_call", "id": "fc_0a1", "call_id": "call_Wx1", "name": "get_weather",
          "arguments": "", "status": "in_progress"}
    fcd = dict(fc, arguments='{"city":"Paris"}', status="completed")
    ev = [("response.created", {"response": base}), ("response.in_progress", {"response": base}),
          ("response.output_item.added", {"output_index": 0, "item": {"type": "reasoning", "id": "rs_0a1",
                                                                       "summary": []}}),
          ("response.reasoning_summary_part.added", {"item_id": "rs_0a1", "output_index": 0, "summary_index": 0,
                                                     "part": {"type": "summary_text", "text": ""}}),
          ("response.reasoning_summary_text.delta", {"item_id": "rs_0a1", "output_index": 0, "summary_index": 0,
                                                     "delta": "Need "}),
          ("response.reasoning_summary_text.delta", {"item_id": "rs_0a1", "output_index": 0, "summary_index": 0,
                                                     "delta": "weather."}),
          ("response.reasoning_summary_text.done", {"item_id": "rs_0a1", "output_index": 0, "summary_index": 0,
                                                    "text": "Need weather."}),
          ("response.reasoning_summary_part.done", {"item_id": "rs_0a1", "output_index": 0, "summary_index": 0,
                                                    "part": {"type": "summary_text", "text": "Need weather."}}),
          ("response.output_item.done", {"output_index": 0, "item": rs}),
          ("response.output_item.added", {"output_index": 1, "item": fc}),
          ("response.function_call_arguments.delta", {"item_id": "fc_0a1", "output_index": 1, "delta": '{"city":'}),
          ("response.function_call_arguments.delta", {"item_id": "fc_0a1", "output_index": 1, "delta": '"Paris"}'}),
          ("response.function_call_arguments.done", {"item_id": "fc_0a1", "output_index": 1,
                                                     "arguments": '{"city":"Paris"}'}),
          ("response.output_item.done", {"output_index": 1, "item": fcd}),
          ("response.completed", {"response": dict(base, status="completed", output=[rs, fcd], usage={
              "input_tokens": 500, "input_tokens_details": {"cached_tokens": 300}, "output_tokens": 80,
              "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 580})})]
    return "".join(responses_event(i, t, **kw) for i, (t, kw) in enumerate(ev))


def claude_next_turn(stream_body, req):
    """The request Claude Code sends next: the assistant turn exactly as the
    SDK accumulated it from the stream, then a tool_result per tool_use."""
    blocks, results = [], []
    for e in harness.parse_sse(stream_body):
        d = json.loads(e["data"])
        if d["type"] == "content_block_start":
            b = dict(d["content_block"])
            b["_args"] = ""
            blocks.append(b)
        elif d["type"] == "content_block_delta":
            b, dl = blocks[-1], d["delta"]
            if dl["type"] == "text_delta":
                b["text"] += dl["text"]
            elif dl["type"] == "thinking_delta":
                b["thinking"] += dl["thinking"]
            elif dl["type"] == "signature_delta":
                b["signature"] = b.get("signature", "") + dl["signature"]
            elif dl["type"] == "input_json_delta":
                b["_args"] += dl["partial_json"]
    for b in blocks:
        args = b.pop("_args")
        if b["type"] == "tool_use":
            b["input"] = json.loads(args) if args else {}
            results.append({"type": "tool_result", "tool_use_id": b["id"], "content": "18C"})
    msgs = req["messages"] + [{"role": "assistant", "content": blocks}, {"role": "user", "content": results}]
    return dict(req, messages=msgs)


class ClaudeOnOtherSuppliersTest(TranslationCase):
    def setUp(self):
        super().setUp()
        self.start('{ claude = { { match = "*gemini*", supplier = "gm", model = "gemini-2.5-flash" },'
                   ' { match = "*gpt-5*", supplier = "rs", model = "gpt-5" },'
                   ' { match = "*", supplier = "oa", model = "gpt-4.1" } } }')

    def test_gemini_supplier(self):
        rid = "tr-claude-gemini"
        self.mock.enqueue(stream_scene(gemini_tools_stream()))
        r = self.post("/v1/messages", dict(CLAUDE_REQ, model="claude-via-gemini"), headers=claude_headers(rid))
        self.assert_ok_sse(r)
        s = self.anthropic_stream(r.body)
        self.assertEqual(s.model, "claude-via-gemini")
        self.assertEqual(s.text, "Checking both.")
        self.assertEqual(s.thinking[0]["text"], "**Planning**")
        # The functionCall's thoughtSignature must come back to Gemini on the
        # next turn, so it travels in a thinking block's signature.
        self.assertIn("c2lnbmF0dXJlMQ==", "".join(b["signature"] for b in s.thinking))
        self.assertEqual([(t["name"], json.loads(t["args"])) for t in s.tools],
                         [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo", "unit": "c"})])
        ids = [t["id"] for t in s.tools]
        self.assertEqual(len(set(ids)), 2, "each tool call gets its own id: %r" % ids)
        self.assertEqual(s.stop, "tool_use")
        # Gemini output = candidates + thoughts; its prompt count includes the cache.
        self.assertEqual(s.usage["output_tokens"], 19)
        self.assertEqual(s.usage["input_tokens"], 32)
        self.assertEqual(s.usage["cache_read_input_tokens"], 8)

        up, body = self.upstream()
        self.assertEqual(up["path"], "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
        self.assertEqual(header_values(up, "authorization"), [])
        self.assertEqual(header_values(up, "x-goog-api-key"), [])
        self.assertEqual([c["role"] for c in body["contents"]], ["user", "model", "user"])
        self.assertEqual(body["contents"][1]["parts"][0]["functionCall"]["name"], "get_time")
        fr = body["contents"][2]["parts"][0]["functionResponse"]
        self.assertEqual(fr["name"], "get_time", "Gemini needs the tool's name on its result")
        self.assertIn("12:00", json.dumps(fr["response"]))
        self.assertIn("weather bot", json.dumps(body["systemInstruction"]))
        self.assertEqual(body["generationConfig"]["maxOutputTokens"], 2048)
        decl = {d["name"] for t in body["tools"] for d in t["functionDeclarations"]}
        self.assertEqual(decl, {"get_weather", "get_time"})
        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["partial"]), ("COMPLETE", False))
        self.assertEqual((rec["usage"]["input_tokens"], rec["usage"]["output_tokens"]), (40, 19))

        # Next turn: Gemini answers 400 when the functionCall of the turn lacks its
        # thoughtSignature, so it must be back on the same part.
        self.mock.reset()
        self.mock.enqueue(stream_scene(gemini_chunk([{"text": "18C in both."}], finish="STOP")))
        nxt = claude_next_turn(r.body, dict(CLAUDE_REQ, model="claude-via-gemini"))
        r2 = self.post("/v1/messages", nxt, headers=claude_headers())
        self.assertEqual(self.anthropic_stream(r2.body).text, "18C in both.")
        _, body2 = self.upstream()
        model_turn = body2["contents"][3]
        self.assertEqual(model_turn["role"], "model")
        calls = [p for p in model_turn["parts"] if "functionCall" in p]
        self.assertEqual([c["functionCall"]["args"] for c in calls],
                         [{"city": "Paris"}, {"city": "Tokyo", "unit": "c"}])
        self.assertEqual(calls[0].get("thoughtSignature"), "c2lnbmF0dXJlMQ==")
        self.assertNotIn("thoughtSignature", calls[1])
        results = [p["functionResponse"] for p in body2["contents"][4]["parts"] if "functionResponse" in p]
        self.assertEqual([fr["name"] for fr in results], ["get_weather", "get_weather"])
        self.assertNotIn("sluice1:", json.dumps(body2), "the envelope never reaches the supplier")

    def test_responses_supplier_with_reasoning(self):
        rid = "tr-claude-responses"
        self.mock.enqueue(stream_scene(responses_reasoning_call_stream()))
        req = dict(CLAUDE_REQ, model="claude-gpt-5", thinking={"type": "enabled", "budget_tokens": 4096})
        r = self.post("/v1/messages", req, headers=claude_headers(rid))
        self.assert_ok_sse(r)
        s = self.anthropic_stream(r.body)
        self.assertEqual(s.model, "claude-gpt-5")
        self.assertEqual(s.names.count("content_block_start"), 2)
        self.assertEqual([b["text"] for b in s.thinking], ["Need weather."])
        self.assertIn("gAAAAABoEnc==", s.thinking[0]["signature"],
                      "the encrypted reasoning travels back as the thinking block's signature")
        self.assertEqual([(t["id"], t["name"], json.loads(t["args"])) for t in s.tools],
                         [("call_Wx1", "get_weather", {"city": "Paris"})])
        self.assertEqual(s.stop, "tool_use")
        self.assertEqual((s.usage["input_tokens"], s.usage["cache_read_input_tokens"], s.usage["output_tokens"]),
                         (200, 300, 80))

        up, body = self.upstream()
        self.assertEqual(up["path"], "/v1/responses")
        # supplier `rs` authenticates with its own x-api-key: the client's is replaced.
        self.assertEqual(header_values(up, "x-api-key"), ["sk-upstream-secret-rs"])
        self.assertEqual(body["model"], "gpt-5")
        self.assertIs(body["stream"], True)
        self.assertIs(body["store"], False)
        self.assertIn("reasoning.encrypted_content", body["include"])
        self.assertIn("weather bot", body["instructions"])
        types = [it.get("type") for it in body["input"]]
        self.assertEqual(types, ["message", "function_call", "function_call_output", "message"])
        self.assertEqual(body["input"][1]["call_id"], "toolu_01PREV")
        self.assertEqual(body["input"][2]["call_id"], "toolu_01PREV")
        self.assertEqual({t["name"] for t in body["tools"]}, {"get_weather", "get_time"})
        self.assertIn('"required":[]', up["body"].replace(" ", ""))

        # Next turn (store:false): the reasoning item goes back with its encrypted_content.
        self.mock.reset()
        self.mock.enqueue(json_scene({"id": "resp_0a2", "object": "response", "status": "completed",
                                      "model": "gpt-5", "output": [{"type": "message", "id": "msg_2",
                                      "role": "assistant", "status": "completed", "content": [
                                          {"type": "output_text", "text": "18C.", "annotations": []}]}],
                                      "usage": {"input_tokens": 600, "output_tokens": 3, "total_tokens": 603}}))
        nxt = claude_next_turn(r.body, req)
        r2 = self.post("/v1/messages", dict(nxt, stream=False), headers=claude_headers())
        self.assertEqual(r2.status, 200, "%r%s" % (r2, self.diag()))
        self.assertEqual(r2.json()["content"], [{"type": "text", "text": "18C."}])
        _, body2 = self.upstream()
        items = body2["input"][4:]
        self.assertEqual([it.get("type") for it in items],
                         ["reasoning", "function_call", "function_call_output"])
        self.assertEqual(items[0]["encrypted_content"], "gAAAAABoEnc==")
        self.assertEqual((items[1]["call_id"], items[2]["call_id"]), ("call_Wx1", "call_Wx1"))
        self.assertNotIn("sluice1:", json.dumps(body2), "the envelope never reaches the supplier")

    def test_long_tool_names_are_shortened_and_restored(self):
        long_name = "mcp__github.com/modelcontextprotocol/servers__create_pull_request_review_comment_thread"
        req = json.loads(json.dumps(CLAUDE_REQ))
        req["tools"].append({"name": long_name, "description": "Comment on a PR",
                             "input_schema": {"type": "object", "properties": {"body": {"type": "string"}}}})
        # Turn 1 (answered by the mock's default) shows the name the supplier sees.
        r = self.post("/v1/messages", dict(req, stream=False), headers=claude_headers())
        up, body = self.upstream()
        short = [t["function"]["name"] for t in body["tools"]
                 if t["function"]["description"] == "Comment on a PR"][0]
        self.assertLessEqual(len(short), 64)
        self.assertRegex(short, r"^[a-zA-Z0-9_-]+$", "OpenAI's tool name rule")
        self.mock.reset()
        # Turn 2: the supplier calls the tool by that name; the client must see its own.
        s = chat_chunk({"role": "assistant", "content": None})
        s += chat_chunk(tool_delta(0, "", "call_mcp1", short))
        s += chat_chunk(tool_delta(0, '{"body":'))
        s += chat_chunk(tool_delta(0, '"LGTM"}'))
        s += chat_chunk({}, finish="tool_calls") + "data: [DONE]\n\n"
        self.mock.enqueue(stream_scene(s, parts=4))
        r = self.post("/v1/messages", req, headers=claude_headers())
        self.assert_ok_sse(r)
        st = self.anthropic_stream(r.body)
        self.assertEqual([(t["id"], t["name"]) for t in st.tools], [("call_mcp1", long_name)])
        self.assertEqual(json.loads(st.tools[0]["args"]), {"body": "LGTM"})
        _, body2 = self.upstream()
        self.assertIn(short, [t["function"]["name"] for t in body2["tools"]],
                      "the same name maps the same way on every turn")

    def test_streaming_client_on_a_json_answer(self):
        # A supplier that ignores `stream` and answers one JSON body.
        self.mock.enqueue(json_scene(CHAT_COMPLETION))
        r = self.post("/v1/messages", CLAUDE_REQ, headers=claude_headers())
        self.assert_ok_sse(r)
        s = self.anthropic_stream(r.body)
        self.assertEqual(s.text, "Checking both.")
        self.assertEqual([(t["id"], json.loads(t["args"])) for t in s.tools],
                         [("call_p1", {"city": "Paris"}), ("call_t2", {"city": "Tokyo", "unit": "f"})])
        self.assertEqual(s.stop, "tool_use")
        self.assertEqual(s.usage["output_tokens"], 40)


# ==================================================================== issue 12: translation fidelity, round 2

GEMINI3_SIG = "CiQBVKhc7Z3RoZ3NpZ25hdHVyZS1nZW1pbmkz"
GEMINI3_REFUSAL = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                   "Function call is missing a thought_signature in functionCall parts."}}

# What Gemini CLI sends for structured output: JSON Schema by name, OpenAPI
# upper-case types inside (and the same in a tool's parametersJsonSchema).
GEMINI_CLI_JSON_REQ = {
    "contents": [{"role": "user", "parts": [{"text": "Is this a bug report? 'it crashes'"}]}],
    "tools": [{"functionDeclarations": [{
        "name": "read_file", "description": "Read a file",
        "parametersJsonSchema": {"type": "OBJECT", "properties": {"path": {"type": "STRING"}},
                                 "required": ["path"]}}]}],
    "generationConfig": {"responseMimeType": "application/json",
                         "responseJsonSchema": {"type": "OBJECT", "properties": {
                             "label": {"type": "STRING", "enum": ["bug", "question"]},
                             "confidence": {"type": "NUMBER"}}, "required": ["label"]}},
}


def schema_types(v):
    """Every `type` value in a JSON document."""
    out = []
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "type" and isinstance(x, str):
                out.append(x)
            out += schema_types(x)
    elif isinstance(v, list):
        for x in v:
            out += schema_types(x)
    return out


class FidelityRound2Test(TranslationCase):
    def setUp(self):
        super().setUp()
        self.start('{ chat = { { match = "*gemini*", supplier = "gm", model = "gemini-3-pro-preview" },'
                   ' { match = "*", supplier = "oa" } },'
                   ' claude = { { match = "*", supplier = "rs", model = "gpt-5" } },'
                   ' codex = { { match = "*", supplier = "oa", model = "gpt-4.1" } },'
                   ' gemini = { { match = "*via-an*", supplier = "an", model = "claude-sonnet-4-5" },'
                   ' { match = "*via-rs*", supplier = "rs", model = "gpt-5" },'
                   ' { match = "*", supplier = "oa", model = "gpt-4.1" } } }')

    def test_openai_sdk_tool_loop_on_gemini3_keeps_the_thought_signature(self):
        # Turn 1: Gemini 3 answers with a signed functionCall (the first of two).
        self.mock.enqueue(stream_scene(
            gemini_chunk([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                           "thoughtSignature": GEMINI3_SIG},
                          {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}], finish="STOP",
                         usage={"promptTokenCount": 20, "candidatesTokenCount": 10, "totalTokenCount": 30})))
        req = dict(CHAT_REQ, model="gpt-gemini", stream=True)
        r = self.post("/v1/chat/completions", req, headers={"Authorization": "Bearer " + CLIENT_KEY})
        self.assert_ok_sse(r)
        s = self.chat_stream(r.body)
        self.assertEqual([(t["name"], json.loads(t["args"])) for t in s.tools],
                         [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})])
        # Turn 2, as the OpenAI SDK builds it: the assistant message with the
        # tool_calls exactly as streamed, one tool message per call. The mock
        # is Gemini 3: without the signature on the first call it refuses.
        self.mock.reset()
        self.mock.enqueue(dict(stream_scene(gemini_chunk([{"text": "Paris 18C, Oslo -2C."}], finish="STOP")),
                               require={"contains": [GEMINI3_SIG],
                                        "status": 400, "body": json.dumps(GEMINI3_REFUSAL)}))
        calls = [{"id": t["id"], "type": "function", "function": {"name": t["name"], "arguments": t["args"]}}
                 for t in s.tools]
        msgs = req["messages"] + [{"role": "assistant", "content": None, "tool_calls": calls}]
        msgs += [{"role": "tool", "tool_call_id": c["id"], "content": out} for c, out in zip(calls, ["18C", "-2C"])]
        r2 = self.post("/v1/chat/completions", dict(req, messages=msgs),
                       headers={"Authorization": "Bearer " + CLIENT_KEY})
        self.assert_ok_sse(r2)
        self.assertEqual(self.chat_stream(r2.body).text, "Paris 18C, Oslo -2C.")
        _, body = self.upstream()
        model_turn = [c for c in body["contents"] if c["role"] == "model"][0]
        self.assertEqual(model_turn["parts"][0].get("thoughtSignature"), GEMINI3_SIG)
        self.assertNotIn("thoughtSignature", model_turn["parts"][1])
        self.assertNotIn("sluice1:", json.dumps(body), "the envelope never reaches the supplier")
        results = [p["functionResponse"]["name"] for c in body["contents"] for p in c["parts"]
                   if "functionResponse" in p]
        self.assertEqual(results, ["get_weather", "get_weather"])

    def test_the_mock_refuses_a_tool_loop_without_the_signature(self):
        # The same second turn with the ids stripped of what sluice gave the
        # client: the signature is lost, so sluice sends Google's placeholder
        # and a Gemini 3 that insists on the real one refuses (the client sees
        # the refusal in its own shape) — proof the mock enforces signatures.
        self.mock.enqueue(dict(json_scene({"candidates": []}),
                               require={"contains": [GEMINI3_SIG], "status": 400,
                                        "body": json.dumps(GEMINI3_REFUSAL)}))
        msgs = CHAT_REQ["messages"] + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_plain", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_plain", "content": "18C"}]
        r = self.post("/v1/chat/completions", dict(CHAT_REQ, model="gpt-gemini", messages=msgs),
                      headers={"Authorization": "Bearer " + CLIENT_KEY})
        self.assertEqual(r.status, 400, "%r%s" % (r, self.diag()))
        self.assertIn("thought_signature", r.json()["error"]["message"])
        _, body = self.upstream()
        self.assertEqual(body["contents"][1]["parts"][0]["thoughtSignature"], "skip_thought_signature_validator")

    def gemini_cli_json(self, model, scene, passthrough_auth=False):
        self.mock.reset()
        self.mock.enqueue(scene)
        r = self.post("/v1beta/models/%s:generateContent" % model, GEMINI_CLI_JSON_REQ,
                      headers={"x-goog-api-key": CLIENT_KEY, "User-Agent": "GeminiCLI/0.9.0"})
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        _, body = self.upstream(passthrough_auth)
        types = schema_types(body)
        self.assertTrue(types, body)
        self.assertEqual([t for t in types if t != t.lower()], [], "upper-case OpenAPI types reached the supplier")
        return r.json(), body

    def test_gemini_cli_response_json_schema_on_every_other_supplier(self):
        answer = '{"label":"bug"}'
        # openai-chat
        out, body = self.gemini_cli_json("gemini-cli-model", json_scene({
            "id": "chatcmpl-j1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}))
        schema = body["response_format"]["json_schema"]["schema"]
        self.assertEqual(schema["properties"]["label"], {"type": "string", "enum": ["bug", "question"]})
        self.assertEqual(body["tools"][0]["function"]["parameters"]["properties"]["path"], {"type": "string"})
        self.assertEqual(out["candidates"][0]["content"]["parts"][0]["text"], answer)
        # anthropic
        out, body = self.gemini_cli_json("gemini-via-an", json_scene({
            "id": "msg_j1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": answer}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 3}}), passthrough_auth=True)
        self.assertEqual(body["output_config"]["format"]["schema"]["type"], "object")
        self.assertEqual(body["tools"][0]["input_schema"]["type"], "object")
        self.assertEqual(out["candidates"][0]["content"]["parts"][0]["text"], answer)
        # openai-responses
        out, body = self.gemini_cli_json("gemini-via-rs", json_scene({
            "id": "resp_j1", "object": "response", "status": "completed", "model": "gpt-5",
            "output": [{"type": "message", "id": "msg_j1", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": answer, "annotations": []}]}],
            "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}}))
        self.assertEqual(body["text"]["format"]["schema"]["properties"]["confidence"], {"type": "number"})
        self.assertEqual(out["candidates"][0]["content"]["parts"][0]["text"], answer)

    def test_responses_stream_without_event_lines_is_complete(self):
        # Some Responses servers send only `data:` lines, the name in `type`.
        typed_only = "".join(line for line in responses_reasoning_call_stream().splitlines(True)
                             if not line.startswith("event:"))
        self.mock.enqueue(stream_scene(typed_only))
        rid = "tr-typed-only"
        r = self.post("/v1/messages", dict(CLAUDE_REQ, model="claude-x"), headers=claude_headers(rid))
        self.assert_ok_sse(r)
        s = self.anthropic_stream(r.body)
        self.assertIsNone(s.error)
        self.assertEqual(s.stop, "tool_use")
        self.assertEqual(s.usage["output_tokens"], 80)
        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["partial"]), ("COMPLETE", False))
        self.assertEqual(rec["usage"]["output_tokens"], 80)

    def test_codex_tools_chat_cannot_carry_are_reported(self):
        # Codex on a Chat supplier (the claude route is not involved): its
        # hosted web_search and an MCP namespace have no Chat equivalent.
        self.mock.enqueue(json_scene({"id": "chatcmpl-w1", "object": "chat.completion", "created": 1,
                                      "model": "gpt-4.1", "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "done"}}],
                                      "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}))
        rid = "tr-dropped"
        req = dict(CODEX_REQ, model="gpt-via-chat", stream=False,
                   tools=CODEX_REQ["tools"] + [{"type": "web_search"},
                                               {"type": "namespace", "name": "mcp__docs", "tools": []}])
        r = self.post("/codex/responses", req, headers={"Authorization": "Bearer " + CLIENT_KEY, "x-request-id": rid})
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(r.header("x-sluice-dropped"), "tool namespace mcp__docs, tool web_search")
        _, body = self.upstream()
        self.assertEqual([t["function"]["name"] for t in body["tools"]], ["shell"])
        self.assertEqual(self.record(rid)["extra"]["dropped"], ["tool namespace mcp__docs", "tool web_search"])

    def test_gemini_model_list_has_gemini_shape(self):
        for path in ("/v1beta/models", "/gemini/v1beta/models"):
            r = harness.request(self.sluice.port, "GET", path, headers={"x-goog-api-key": CLIENT_KEY})
            self.assertEqual(r.status, 200, "%s %r" % (path, r))
            models = r.json()["models"]
            self.assertTrue(models, r.json())
            for m in models:
                self.assertTrue(m["name"].startswith("models/"), m)
                self.assertIn("generateContent", m["supportedGenerationMethods"])
            self.assertIn("models/gpt-4.1", [m["name"] for m in models])


class SupplierCompatTest(TranslationCase):
    """A DeepSeek-like openai-chat supplier: wants max_tokens, allows 8192
    output tokens; Claude Code asks for 32000 and sends its billing line."""

    def setUp(self):
        super().setUp()
        self.db = os.path.join(tempfile.mkdtemp(prefix="sluice-tr-"), "history.db")
        self.start_sluice(
            suppliers_extra='    ds = { protocol = "openai-chat", base_url = "http://127.0.0.1:%d/v1", '
                            'auth = { type = "none" }, compat = { max_tokens_field = "max_tokens" }, '
                            'max_output_tokens = 8192 },\n' % self.mock.port,
            routes='{ claude = { { match = "*", supplier = "ds", model = "deepseek-chat" } },'
                   ' chat = { { match = "*", supplier = "oa", max_output_tokens = 1000 } } }',
            extra='history = { path = "%s" },\n  retry = { attempts = 1 },\n' % self.db)

    def test_claude_code_on_a_max_tokens_supplier(self):
        self.mock.enqueue(json_scene({"id": "chatcmpl-d1", "object": "chat.completion", "created": 1,
                                      "model": "deepseek-chat", "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "hi"}}],
                                      "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}))
        req = dict(CLAUDE_REQ, stream=False, max_tokens=32000)
        req["system"] = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.0.14.e1f; cc_entrypoint=cli; cch=7a2c;"}] \
            + CLAUDE_REQ["system"]
        r = self.post("/v1/messages", req, headers=claude_headers())
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        _, body = self.upstream()
        self.assertEqual(body["max_tokens"], 8192, "clamped to the supplier's max_output_tokens, in its field")
        self.assertNotIn("max_completion_tokens", body)
        self.assertNotIn("billing-header", json.dumps(body), "the per-request billing line is left out")
        self.assertIn("weather bot", body["messages"][0]["content"])

    def test_malformed_request_is_a_400_in_the_clients_shape(self):
        # A max_tokens that is not a number, under the supplier's cap, and a
        # tool that is not an object: the client's SDK gets
        # Anthropic's invalid_request_error, not a 500 from a failed script.
        for req in (dict(CLAUDE_REQ, stream=False, max_tokens="32000"),
                    dict(CLAUDE_REQ, stream=False, tools=[7])):
            r = self.post("/v1/messages", req, headers=claude_headers())
            self.assertEqual(r.status, 400, "%r%s" % (r, self.diag()))
            err = r.json()
            self.assertEqual(err["type"], "error", err)
            self.assertEqual(err["error"]["type"], "invalid_request_error", err)

    def test_route_cap_on_passthrough(self):
        # chat -> `oa` speaks the client's protocol: the body passes through,
        # only the output limit the client asked for is lowered to the route's cap.
        self.mock.enqueue(json_scene({"id": "chatcmpl-c1", "object": "chat.completion", "created": 1,
                                      "model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "ok"}}],
                                      "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}))
        r = self.post("/v1/chat/completions", dict(CHAT_REQ, max_tokens=5000),
                      headers={"Authorization": "Bearer " + CLIENT_KEY})
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(r.json()["choices"][0]["message"]["content"], "ok")
        _, body = self.upstream()
        self.assertEqual(body["max_tokens"], 1000)
        self.assertEqual(body["messages"], CHAT_REQ["messages"], "the rest passes as the client sent it")


class ResponseIdsTest(harness.SluiceTestCase):
    """Response ids a gateway makes up must not repeat: clients and logs
    correlate by them. Each worker VM's random generator needs its own seed."""

    def test_message_ids_differ_across_restarts(self):
        ids = []
        for _ in range(2):
            s = self.start_sluice(routes=CLAUDE_ON_OPENAI)
            self.mock.enqueue(json_scene(CHAT_COMPLETION))
            r = self.post("/v1/messages", dict(CLAUDE_REQ, stream=False), headers=claude_headers())
            self.assertEqual(r.status, 200, r)
            ids.append(r.json()["id"])
            s.stop()
        self.assertNotEqual(ids[0], ids[1], "the same message id after a restart")


if __name__ == "__main__":
    harness.main()
