"""test_tool_text — tool calls that models write as text, through the real binary.

Suppliers with `tool_text = { parse = ... }` answer (on the mock) with the
call written into their text the way the model family writes it: Hermes
<tool_call> JSON, Kimi K2's tool-call section, Qwen3-Coder's XML. The client
(Claude Code, Codex, Gemini CLI, an OpenAI SDK on the supplier's own
protocol) must get real tool calls in its own protocol — tool_use blocks
with stop_reason tool_use, function_call items, functionCall parts,
tool_calls — streamed and whole, the text around them intact, and the
history record says how many calls were parsed and by which dialect. A
call to a tool the request did not declare stays text, and a config naming
an unknown dialect fails --check naming the field.
"""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from test_translation import (CLAUDE_REQ, CODEX_REQ, GEMINI_REQ, CHAT_REQ, CLIENT_KEY,  # noqa: E402
                              TranslationCase, chat_chunk, claude_headers, json_scene, stream_scene)

SUPPLIERS = """
    ht = { protocol = "openai-chat", base_url = "@BASE@/v1", auth = { type = "bearer", token = "sk-up-ht" },
           tool_text = { parse = "hermes" } },
    kk = { protocol = "openai-chat", base_url = "@BASE@/v1", auth = { type = "bearer", token = "sk-up-kk" },
           tool_text = { parse = "kimi_k2" } },
    qc = { protocol = "openai-chat", base_url = "@BASE@/v1", auth = { type = "bearer", token = "sk-up-qc" },
           tool_text = { parse = "auto" } },
    em = { protocol = "openai-chat", base_url = "@BASE@/v1", auth = { type = "bearer", token = "sk-up-em" },
           tool_text = { emulate = "hermes" } },
"""

ROUTES = """{
    claude = { { match = "emulated", supplier = "em", model = "tiny-llm" },
               { match = "*", supplier = "ht", model = "qwen3-32b" } },
    codex  = { { match = "*", supplier = "kk", model = "kimi-k2" } },
    gemini = { { match = "*", supplier = "qc", model = "qwen3-coder" } },
    chat   = { { match = "plain", supplier = "oa" }, { match = "*", supplier = "ht", model = "qwen3-32b" } },
  }"""

HERMES_TEXT = ('I will check Paris \u2603.\n\n<tool_call>\n{"name": "get_weather", "arguments": '
               '{"city": "Paris \\"centre\\"", "unit": "c"}}\n</tool_call>\n<tool_call>\n'
               '{"name": "get_time", "arguments": {}}\n</tool_call>')
KIMI_TEXT = ('Listing.<|tool_calls_section_begin|><|tool_call_begin|>functions.shell:0'
             '<|tool_call_argument_begin|>{"command": ["ls", "-la"]}<|tool_call_end|>'
             '<|tool_calls_section_end|>')
QWEN_TEXT = ('<tool_call>\n<function=get_weather>\n<parameter=city>\nS\u00e3o Paulo\n</parameter>\n'
             '</function>\n</tool_call>')


def text_stream(text, pieces=7):
    """An OpenAI chat stream whose content is `text` in `pieces` deltas
    (split inside the markers), finish_reason stop, usage, [DONE]."""
    s = chat_chunk({"role": "assistant", "content": ""})
    n = max(1, len(text) // pieces)
    for i in range(0, len(text), n):
        s += chat_chunk({"content": text[i:i + n]})
    s += chat_chunk({}, finish="stop")
    s += chat_chunk(choices=False, usage={"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120})
    return s + "data: [DONE]\n\n"


def text_completion(text):
    return {"id": "chatcmpl-T1", "object": "chat.completion", "created": 1730000000, "model": "qwen3",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}


class ToolTextCase(TranslationCase):
    def setUp(self):
        super().setUp()
        base = "http://127.0.0.1:%d" % self.mock.port
        self.db = os.path.join(__import__("tempfile").mkdtemp(prefix="sluice-tt-"), "history.db")
        extra = '  history = { path = "%s" },\n  retry = { attempts = 1 },\n' % self.db
        self.start_sluice(suppliers_extra=SUPPLIERS.replace("@BASE@", base), routes=ROUTES, extra=extra)

    def extra(self, rid):
        rec = self.record(rid)
        self.assertEqual((rec["reason"], rec["partial"], rec["status"]), ("COMPLETE", False, 200))
        return rec.get("extra") or {}


class ClaudeOnHermesTest(ToolTextCase):
    def check_claude(self, content, stop):
        self.assertEqual(stop, "tool_use")
        self.assertEqual(content[0], ("text", "I will check Paris \u2603.\n\n"))
        self.assertEqual([c[1:3] for c in content[1:]],
                         [("get_weather", {"city": 'Paris "centre"', "unit": "c"}), ("get_time", {})])
        ids = [c[3] for c in content[1:]]
        self.assertTrue(all(i.startswith("toolu_") for i in ids), ids)
        self.assertEqual(len(set(ids)), 2, "ids are unique")

    def test_stream(self):
        rid = "tt-claude-stream"
        self.mock.enqueue(stream_scene(text_stream(HERMES_TEXT)))
        r = self.post("/v1/messages", CLAUDE_REQ, headers=claude_headers(rid))
        self.assert_ok_sse(r)
        s = self.anthropic_stream(r.body)
        self.assertIsNone(s.error)
        content = [("text", s.text)] + [("tool_use", t["name"], json.loads(t["args"]), t["id"]) for t in s.tools]
        self.check_claude(content, s.stop)
        self.assertNotIn("<tool_call>", s.text)
        up, body = self.upstream()
        self.assertEqual(body["model"], "qwen3-32b")
        self.assertIn("tools", body, "parsing does not change what is sent upstream")
        self.assertEqual(self.extra(rid).get("tool_text"), {"calls": 2, "dialect": "hermes", "emulated": False})

    def test_json(self):
        rid = "tt-claude-json"
        self.mock.enqueue(json_scene(text_completion(HERMES_TEXT)))
        r = self.post("/v1/messages", dict(CLAUDE_REQ, stream=False), headers=claude_headers(rid))
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        m = r.json()
        content = []
        for b in m["content"]:
            if b["type"] == "text":
                content.append(("text", b["text"]))
            else:
                content.append((b["type"], b["name"], b["input"], b["id"]))
        self.check_claude(content, m["stop_reason"])
        self.assertEqual(self.extra(rid).get("tool_text"), {"calls": 2, "dialect": "hermes", "emulated": False})

    def test_undeclared_tool_stays_text(self):
        rid = "tt-claude-unknown"
        text = 'Sure: <tool_call>{"name": "delete_everything", "arguments": {}}</tool_call>'
        self.mock.enqueue(stream_scene(text_stream(text)))
        r = self.post("/v1/messages", CLAUDE_REQ, headers=claude_headers(rid))
        self.assert_ok_sse(r)
        s = self.anthropic_stream(r.body)
        self.assertEqual((s.text, s.tools, s.stop), (text, [], "end_turn"))
        self.assertEqual(self.extra(rid).get("tool_text"), {"calls": 0, "dialect": "hermes", "emulated": False})


class CodexOnKimiTest(ToolTextCase):
    def test_stream(self):
        rid = "tt-codex-stream"
        self.mock.enqueue(stream_scene(text_stream(KIMI_TEXT)))
        r = self.post("/codex/responses", CODEX_REQ,
                      headers={"Authorization": "Bearer " + CLIENT_KEY, "x-request-id": rid})
        self.assert_ok_sse(r)
        s = self.responses_stream(r.body)
        self.assertIsNone(s.error)
        self.assertEqual(s.stop, "completed")
        self.assertEqual(s.text, "Listing.")
        self.assertEqual([(t["id"], t["name"], json.loads(t["args"])) for t in s.tools],
                         [("functions.shell:0", "shell", {"command": ["ls", "-la"]})])
        types = [it["type"] for it in s.final["output"]]
        self.assertEqual(types, ["message", "function_call"])
        self.assertEqual(self.extra(rid).get("tool_text"), {"calls": 1, "dialect": "kimi_k2", "emulated": False})


class GeminiOnQwenCoderTest(ToolTextCase):
    def test_stream(self):
        rid = "tt-gemini-stream"
        self.mock.enqueue(stream_scene(text_stream(QWEN_TEXT)))
        r = self.post("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", GEMINI_REQ,
                      headers={"x-goog-api-key": CLIENT_KEY, "x-request-id": rid})
        self.assert_ok_sse(r)
        s = self.gemini_stream(r.body)
        self.assertIsNone(s.error)
        self.assertEqual(s.text, "")
        self.assertEqual([(t["name"], t["args"]) for t in s.tools], [("get_weather", {"city": "S\u00e3o Paulo"})])
        self.assertEqual(s.stop, "STOP")
        self.assertEqual(self.extra(rid).get("tool_text"), {"calls": 1, "dialect": "qwen3_coder", "emulated": False})


class SameProtocolTest(ToolTextCase):
    def test_chat_client_on_its_own_protocol_gets_tool_calls(self):
        rid = "tt-chat-json"
        self.mock.enqueue(json_scene(text_completion(HERMES_TEXT)))
        r = self.post("/v1/chat/completions", CHAT_REQ | {"model": "gpt-x"},
                      headers={"Authorization": "Bearer " + CLIENT_KEY, "x-request-id": rid})
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        ch = r.json()["choices"][0]
        self.assertEqual(ch["finish_reason"], "tool_calls")
        # This request declares get_weather only: the get_time region stays text.
        self.assertEqual(ch["message"]["content"], "I will check Paris \u2603.\n\n"
                         + '\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
        calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                 for c in ch["message"]["tool_calls"]]
        self.assertEqual(calls, [("get_weather", {"city": 'Paris "centre"', "unit": "c"})])
        self.assertTrue(ch["message"]["tool_calls"][0]["id"].startswith("call_"))
        up, body = self.upstream()
        self.assertEqual(body["model"], "qwen3-32b")

    def test_stream_on_its_own_protocol(self):
        rid = "tt-chat-stream"
        text = 'Ok.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
        self.mock.enqueue(stream_scene(text_stream(text)))
        r = self.post("/v1/chat/completions", CHAT_REQ | {"model": "gpt-x", "stream": True},
                      headers={"Authorization": "Bearer " + CLIENT_KEY, "x-request-id": rid})
        self.assert_ok_sse(r)
        s = self.chat_stream(r.body)
        self.assertEqual(s.text, "Ok.")
        self.assertEqual([(t["name"], json.loads(t["args"])) for t in s.tools], [("get_weather", {"city": "Oslo"})])
        self.assertEqual(s.stop, "tool_calls")

    def test_supplier_without_parsing_passes_the_text_through(self):
        text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
        self.mock.enqueue(json_scene(text_completion(text)))
        r = self.post("/v1/chat/completions", CHAT_REQ | {"model": "plain"},
                      headers={"Authorization": "Bearer " + CLIENT_KEY})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["choices"][0]["message"]["content"], text)


class EmulationTest(ToolTextCase):
    """A supplier with no tool support: two turns of a Claude Code conversation."""

    TOOLS = [{"name": "get_weather", "description": "Current weather",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]

    def test_two_turns(self):
        first = {"model": "emulated", "max_tokens": 512, "stream": True,
                 "system": [{"type": "text", "text": "You are a weather bot."}],
                 "messages": [{"role": "user", "content": "Weather in Oslo?"}],
                 "tools": self.TOOLS, "tool_choice": {"type": "any"}}
        answer = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
        self.mock.enqueue(stream_scene(text_stream(answer)))
        r = self.post("/v1/messages", first, headers=claude_headers("tt-emu-1"))
        self.assert_ok_sse(r)
        s = self.anthropic_stream(r.body)
        self.assertEqual(s.text, "Let me look.\n")
        self.assertEqual([(t["name"], json.loads(t["args"])) for t in s.tools], [("get_weather", {"city": "Oslo"})])
        self.assertEqual(s.stop, "tool_use")
        call_id = s.tools[0]["id"]
        self.assertEqual(self.extra("tt-emu-1").get("tool_text"), {"calls": 1, "dialect": "hermes", "emulated": True})
        up = json.loads(self.mock.requests()[0]["body"])
        self.assertEqual(up["model"], "tiny-llm")
        for field in ("tools", "tool_choice", "parallel_tool_calls"):
            self.assertNotIn(field, up, "no %s upstream for an emulating supplier" % field)
        system = up["messages"][0]
        self.assertEqual(system["role"], "system")
        sys_text = json.dumps(system["content"])
        self.assertIn("You are a weather bot.", sys_text)
        self.assertIn("get_weather", sys_text)
        self.assertIn("<tool_call>", sys_text)
        self.assertIn("must call at least one", sys_text)

        self.mock.reset()
        second = dict(first, stream=False, messages=first["messages"] + [
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look.\n"},
                                              {"type": "tool_use", "id": call_id, "name": "get_weather",
                                               "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id,
                                          "content": "4C, snow"}]}])
        second.pop("tool_choice")
        self.mock.enqueue(json_scene(text_completion("It is 4C and snowing in Oslo.")))
        r = self.post("/v1/messages", second, headers=claude_headers("tt-emu-2"))
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        m = r.json()
        self.assertEqual((m["content"], m["stop_reason"]),
                         ([{"type": "text", "text": "It is 4C and snowing in Oslo."}], "end_turn"))
        up = json.loads(self.only_request()["body"])
        self.assertNotIn("tools", up)
        msgs = up["messages"]
        self.assertEqual([m["role"] for m in msgs], ["system", "user", "assistant", "user"],
                         "calls and results travel as plain text turns, no tool role")
        self.assertNotIn("tool_calls", msgs[2])
        said = msgs[2]["content"] if isinstance(msgs[2]["content"], str) else \
            "".join(p["text"] for p in msgs[2]["content"])
        self.assertIn('<tool_call>\n{"name": "get_weather", "arguments": {"city":"Oslo"}}\n</tool_call>', said)
        result = json.dumps(msgs[3]["content"])
        self.assertIn("<tool_response", result)
        self.assertIn("4C, snow", result)


class CheckTest(unittest.TestCase):
    def test_unknown_dialect_fails_check_naming_the_field(self):
        cfg = harness.sluice_config(1, suppliers_extra=(
            '    bad = { protocol = "openai-chat", base_url = "http://127.0.0.1:1/v1", '
            'tool_text = { parse = "hermez" } },\n'))
        rc, out = harness.run_check(cfg)
        self.assertNotEqual(rc, 0)
        self.assertIn("suppliers.bad.tool_text.parse", out)
        self.assertIn("hermez", out)


if __name__ == "__main__":
    harness.main()
