"""test_adapters — supplier adapters in the real binary.

`suppliers.<id>.adapter = "example"` loads config/adapters/example.lua (the
worked adapter the README explains) from the config's directory. Its
fictional supplier "Acme" speaks OpenAI chat with quirks: another path and
field names, errors wrapped in a 200, answers wrapped in an envelope, a
session id, heartbeat events and wrapped errors inside streams. These tests
run the repo's example file against the mock playing Acme, for a chat
client (same protocol) and an Anthropic client (translated), and show that
a broken adapter is refused at load time and a runaway one is stopped by the
script budget without taking the worker down.
"""

import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import request  # noqa: E402

EXAMPLE = os.path.join(harness.SOURCE_DIR, "config", "adapters", "example.lua")
ACME_PATH = "/v1/acme/v2/chat"
CHAT = '{"model":"acme-large","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}'
CHAT_STREAM = ('{"model":"acme-large","max_tokens":32,"stream":true,'
               '"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}')
ANTH = '{"model":"claude-sonnet-4-5","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}'
ANTH_STREAM = ('{"model":"claude-sonnet-4-5","max_tokens":32,"stream":true,'
               '"messages":[{"role":"user","content":"hi"}]}')
ANTH_HEADERS = {"anthropic-version": "2023-06-01"}

COMPLETION = {"id": "cmpl-1", "object": "chat.completion", "created": 1, "model": "acme-large",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from acme"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


def chunk(content=None, finish=None):
    delta = {"content": content} if content is not None else {}
    return "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "acme-large",
                                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"


class AdaptedSluice(harness.Sluice):
    """A sluice whose config directory holds adapters/ (copied before it starts)."""
    adapters = {}

    def write_config(self, text):
        d = os.path.join(self.dir, "adapters")
        os.makedirs(d, exist_ok=True)
        shutil.copy(EXAMPLE, os.path.join(d, "example.lua"))
        for name, src in self.adapters.items():
            with open(os.path.join(d, name + ".lua"), "w") as f:
                f.write(src)
        super().write_config(text)


class AdapterTest(harness.SluiceTestCase):
    def start(self, adapter="example", extra_adapters=None, extra=""):
        self.hist = tempfile.mkdtemp(prefix="sluice-adapters-")
        self.addCleanup(shutil.rmtree, self.hist, True)
        base = "http://%s:%d/v1" % (harness.HOST, self.mock.port)
        supplier = ('    acme = { protocol = "openai-chat", base_url = "%s", adapter = "%s",\n'
                    '             auth = { type = "bearer", token = "sk-acme-upstream" } },\n' % (base, adapter))
        routes = '{ chat = { { match = "*", supplier = "acme" } }, claude = { { match = "*", supplier = "acme" } } }'
        cfg = harness.sluice_config(self.mock.port, suppliers_extra=supplier, routes=routes,
                                    extra='  retry = { attempts = 1 },\n  history = { path = "%s/history.db" },\n%s'
                                    % (self.hist, extra))
        AdaptedSluice.adapters = extra_adapters or {}
        s = AdaptedSluice(cfg)
        self.addCleanup(s.cleanup)
        self.sluice = s
        return s

    def acme_requests(self):
        return [r for r in self.mock.requests() if r["path"].startswith(ACME_PATH)]

    def record(self, rid):
        r = request(self.sluice.port, "GET", "/_sluice/requests/" + rid)
        self.assertEqual(r.status, 200, repr(r))
        return r.json()

    # ------------------------------------------------------------------ whole answers

    def test_request_is_shaped_and_wrapped_answer_unwrapped(self):
        s = self.start()
        self.mock.enqueue({"path": ACME_PATH, "body": json.dumps({"status": "ok", "session": "acme-sess-1",
                                                                    "result": COMPLETION})})
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT, headers={"x-request-id": "adapt-1"})
        self.assertEqual(r.status, 200, repr(r) + self.diag())
        self.assertEqual(r.json()["choices"][0]["message"]["content"], "hello from acme")
        self.assertNotIn("result", r.json())
        up = self.acme_requests()
        self.assertEqual(len(up), 1, [q["path"] for q in self.mock.requests()])
        self.assertEqual(harness.header_values(up[0], "x-acme-trace"), ["adapt-1"])
        self.assertEqual(harness.header_values(up[0], "authorization"), ["Bearer sk-acme-upstream"])
        sent = json.loads(up[0]["body"])
        self.assertEqual(sent["max_output_tokens"], 32)
        self.assertNotIn("max_tokens", sent)
        rec = self.record("adapt-1")
        self.assertIn("acme-sess-1", json.dumps(rec), "the supplier's session id is in the history record")

    def test_error_wrapped_in_200_reaches_each_client_in_its_shape(self):
        s = self.start()
        err = json.dumps({"status": "error", "error": {"code": "quota_exceeded", "message": "out of credit"}})
        self.mock.enqueue([{"path": ACME_PATH, "body": err}, {"path": ACME_PATH, "body": err}])
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT)
        self.assertEqual(r.status, 429, repr(r) + self.diag())
        self.assertEqual(r.json()["error"]["message"], "acme quota_exceeded: out of credit")
        # OpenAI's rate-limit shape (PROTOCOLS §2.5): type "requests", code rate_limit_exceeded.
        self.assertEqual(r.json()["error"]["type"], "requests")
        self.assertEqual(r.json()["error"]["code"], "rate_limit_exceeded")
        r = request(s.port, "POST", "/v1/messages", body=ANTH, headers=ANTH_HEADERS)
        self.assertEqual(r.status, 429, repr(r) + self.diag())
        self.assertEqual(r.json()["type"], "error")
        self.assertEqual(r.json()["error"]["type"], "rate_limit_error")
        self.assertEqual(r.json()["error"]["message"], "acme quota_exceeded: out of credit")

    def test_translated_client_gets_the_unwrapped_answer(self):
        s = self.start()
        self.mock.enqueue({"path": ACME_PATH, "body": json.dumps({"status": "ok", "result": COMPLETION})})
        r = request(s.port, "POST", "/v1/messages", body=ANTH, headers=ANTH_HEADERS)
        self.assertEqual(r.status, 200, repr(r) + self.diag())
        body = r.json()
        self.assertEqual(body["type"], "message")
        self.assertEqual(body["content"][0]["text"], "hello from acme")
        self.assertEqual(body["model"], "claude-sonnet-4-5")

    # ------------------------------------------------------------------ streams

    def test_stream_heartbeats_dropped_for_a_chat_client(self):
        s = self.start()
        sse = ("event: heartbeat\ndata: {}\n\n" + chunk("Hel") + "event: heartbeat\ndata: {}\n\n" +
               chunk("lo") + chunk(None, "stop") + "data: [DONE]\n\n")
        self.mock.enqueue({"path": ACME_PATH, "headers": {"Content-Type": "text/event-stream",
                                                          "x-acme-session": "acme-sess-stream"},
                           "chunks": harness.sse_chunks(sse, parts=7)})
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT_STREAM, headers={"x-request-id": "adapt-s"})
        self.assertEqual(r.status, 200, repr(r) + self.diag())
        events = harness.parse_sse(r.body)
        self.assertNotIn("heartbeat", [e["event"] for e in events])
        self.assertEqual(events[-1]["data"], "[DONE]")
        text = "".join(json.loads(e["data"])["choices"][0]["delta"].get("content", "")
                       for e in events[:-1])
        self.assertEqual(text, "Hello")
        sent = json.loads(self.acme_requests()[0]["body"])
        self.assertNotIn("stream_options", sent)
        self.assertIn("acme-sess-stream", json.dumps(self.record("adapt-s")))

    def test_error_inside_a_stream_reaches_an_anthropic_client(self):
        s = self.start()
        sse = (chunk("partial ") + "event: heartbeat\ndata: {}\n\n" +
               "data: " + json.dumps({"status": "error", "error": {"code": "overloaded",
                                                                   "message": "try later"}}) + "\n\n")
        self.mock.enqueue({"path": ACME_PATH, "chunks": harness.sse_chunks(sse)})
        r = request(s.port, "POST", "/v1/messages", body=ANTH_STREAM, headers=ANTH_HEADERS)
        self.assertEqual(r.status, 200, repr(r) + self.diag())
        events = harness.parse_sse(r.body)
        names = [e["event"] for e in events]
        self.assertNotIn("heartbeat", names)
        self.assertIn("error", names, names)
        err = json.loads(events[names.index("error")]["data"])
        self.assertIn("acme overloaded: try later", err["error"]["message"])
        self.assertEqual(names[-1], "message_stop")

    # ------------------------------------------------------------------ usage in the record

    def usage(self, rid):
        return self.record(rid)["usage"]

    def test_adapted_answers_and_streams_record_their_usage(self):
        # Same protocol through an adapter (the Relay): these used to record
        # input_tokens null. Translated ones are the control.
        s = self.start()
        self.mock.enqueue([{"path": ACME_PATH, "body": json.dumps({"status": "ok", "result": COMPLETION})},
                           {"path": ACME_PATH, "body": json.dumps({"status": "ok", "result": COMPLETION})}])
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT, headers={"x-request-id": "use-1"})
        self.assertEqual(r.status, 200, repr(r) + self.diag())
        r = request(s.port, "POST", "/v1/messages", body=ANTH, headers=dict(ANTH_HEADERS, **{"x-request-id": "use-2"}))
        self.assertEqual(r.status, 200, repr(r) + self.diag())
        for rid in ("use-1", "use-2"):
            u = self.usage(rid)
            self.assertEqual((u["input_tokens"], u["output_tokens"]), (5, 3), "%s: %r" % (rid, u))
        usage = "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "acme-large",
                                       "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2,
                                                                "total_tokens": 13}}) + "\n\n"
        sse = chunk("Hi") + "event: heartbeat\ndata: {}\n\n" + chunk(None, "stop") + usage + "data: [DONE]\n\n"
        self.mock.enqueue([{"path": ACME_PATH, "headers": {"Content-Type": "text/event-stream"},
                            "chunks": harness.sse_chunks(sse)},
                           {"path": ACME_PATH, "headers": {"Content-Type": "text/event-stream"},
                            "chunks": harness.sse_chunks(sse)}])
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT_STREAM, headers={"x-request-id": "use-3"})
        self.assertEqual(r.status, 200, repr(r) + self.diag())
        self.assertIn('"prompt_tokens": 11', r.body.decode())
        r = request(s.port, "POST", "/v1/messages", body=ANTH_STREAM,
                    headers=dict(ANTH_HEADERS, **{"x-request-id": "use-4"}))
        self.assertEqual(r.status, 200, repr(r) + self.diag())
        for rid in ("use-3", "use-4"):
            u = self.usage(rid)
            self.assertEqual((u["input_tokens"], u["output_tokens"]), (11, 2), "%s: %r" % (rid, u))

    # ------------------------------------------------------------------ broken adapters

    def test_missing_or_broken_adapter_is_refused_at_load(self):
        base = "http://127.0.0.1:%d/v1" % self.mock.port
        for adapter, words in (("nosuch", "no adapter nosuch"), ("../x", "expected an adapter name")):
            cfg = harness.sluice_config(self.mock.port, suppliers_extra=(
                '    acme = { protocol = "openai-chat", base_url = "%s", adapter = "%s" },\n' % (base, adapter)))
            code, out = harness.run_check(cfg)
            self.assertNotEqual(code, 0, out)
            self.assertIn("suppliers.acme.adapter", out)
            self.assertIn(words, out)

    def test_runaway_adapter_is_stopped_by_the_budget(self):
        loop = "return { request = function(ctx, plan, body) local n = 0 while true do n = n + 1 end end }"
        s = self.start(adapter="loop", extra_adapters={"loop": loop}, extra="  script_budget = 2000000,\n")
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT, timeout=30)
        self.assertEqual(r.status, 500, repr(r))
        self.assertIn("script", r.json()["error"]["message"])
        self.assertIn("instruction budget", s.stderr())
        self.assertEqual(self.acme_requests(), [])
        # The worker lives on.
        self.assertEqual(request(s.port, "GET", "/_sluice/health").status, 200)


if __name__ == "__main__":
    harness.main()
