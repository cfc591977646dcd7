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


# ---------------------------------------------------------------- ops code and the budget (item 19)

# A module on lua_path and a file for loadfile/dofile, each looping forever
# when asked; on_request picks the way in by the x-spin header.
SPIN_MODULE = """local M = {}
function M.spin() while true do end end
function M.spin_for(n) local x = 0; for i = 1, n do x = x + i end; return x end
return M
"""
SPIN_HOOK = """function(ctx)
    local how = ctx.headers["x-spin"]
    if how == "require" then require("spinmod").spin()
    elseif how == "require-for" then require("spinmod").spin_for(1e12)
    elseif how == "loadstring" then loadstring("while true do end")()
    elseif how == "load" then load("local n = 0; repeat n = n + 1 until false")()
    elseif how == "loadfile" then loadfile(SPIN_DIR .. "/spinfile.lua")()
    elseif how == "dofile" then dofile(SPIN_DIR .. "/spinfile.lua")
    elseif how == "wedge" then string.find(string.rep("a", 5000), ".-.-.-.-.-.-.-.-b")
    end
  end"""


class OpsCodeBudgetTest(harness.SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="sluice-spin-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        with open(os.path.join(self.dir, "spinmod.lua"), "w") as f:
            f.write(SPIN_MODULE)
        with open(os.path.join(self.dir, "spinfile.lua"), "w") as f:
            f.write("local t = {}\nwhile true do t[1] = 1 end\n")

    def start(self, workers=1, shutdown_timeout=30):
        return self.start_sluice(
            workers=workers, prelude="local SPIN_DIR = %s\n" % harness.lua_str(self.dir),
            on_request=SPIN_HOOK,
            extra='  lua_path = %s,\n  script_budget = 2000000,\n  shutdown_timeout = %s,\n'
                  % (harness.lua_str(self.dir + "/?.lua"), shutdown_timeout))

    def spin(self, how, timeout=20):
        return request(self.sluice.port, "POST", "/v1/chat/completions", body=chat("gpt-4.1"),
                       headers={"x-spin": how}, timeout=timeout)

    def test_runaway_ops_code_costs_one_request_not_the_worker(self):
        self.start()
        for how in ["require", "require-for", "loadstring", "load", "loadfile", "dofile"]:
            t0 = time.monotonic()
            try:
                r = self.spin(how)
            except OSError as e:
                self.fail("%s: no answer (%s): the loop ran compiled, past the budget%s"
                          % (how, e, self.diag()))
            self.assertEqual(r.status, 500, "%s: %r%s" % (how, r, self.diag()))
            self.assertIn("request id", r.json()["error"]["message"])
            self.assertLess(time.monotonic() - t0, 15, how)
            # The same (only) worker answers the next request.
            self.mock.enqueue(json_scene(CHAT_JSON))
            r = self.post("/v1/chat/completions", chat("gpt-4.1"))
            self.assertEqual(r.status, 200, "%s: %r%s" % (how, r, self.diag()))
        self.assertIn("instruction budget", self.sluice.stderr())

    def test_sigterm_ends_a_wedged_process_after_shutdown_timeout(self):
        # Pattern matching is C: no budget reaches it, and this one would run
        # for ages. SIGTERM must still end the process, a little after
        # shutdown_timeout, with a non-zero exit and a log line saying why.
        s = self.start(workers=2, shutdown_timeout=1)
        conns = []
        for _ in range(2):   # two connections: with SO_REUSEPORT one may land on each worker
            c = harness.RawConn(s.port, timeout=30)
            self.addCleanup(c.close)
            c.send(harness.build_request("POST", "/v1/chat/completions", chat("gpt-4.1"),
                                         {"Content-Type": "application/json", "x-spin": "wedge"}, s.port))
            conns.append(c)
        time.sleep(0.5)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        try:
            rc = s.proc.wait(15)
        except Exception:
            self.fail("SIGTERM did not end a process with a wedged worker within 15 s" + self.diag())
        took = time.monotonic() - t0
        self.assertGreaterEqual(took, 0.9, "exited before shutdown_timeout")
        self.assertLess(took, 1 + 5, "took %.1f s" % took)
        self.assertNotEqual(rc, 0, "a forced exit must not look like a clean drain")
        self.assertIn("did not stop", s.stderr())


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


# ---------------------------------------------------------------- reloads (items 17, 22)

KEY = "gateway-key-ALPHA-7781"
ADMIN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": "Bearer " + ADMIN}


def routed(mock_port, model, extra="", listen="127.0.0.1"):
    """Every chat request goes to `oa` with its model rewritten to `model`."""
    cfg = sluice_config(mock_port, extra=extra, routes="""{
    chat = { { match = "*", supplier = "oa", model = "%s" } },
  }""" % model)
    return cfg.replace('"127.0.0.1:@PORT@"', '"%s:@PORT@"' % listen).replace(
        'auth = { type = "passthrough" }', 'auth = { type = "none" }')


def public(mock_port, model):
    """Bound to every address, with gateway keys and an admin token."""
    return routed(mock_port, model, listen="0.0.0.0",
                  extra='  keys = { "%s" },\n  admin = { token = "%s" },\n' % (KEY, ADMIN))


class ReloadCase(harness.SluiceTestCase):
    def start_authed(self, config_text, workers=2):
        # harness.Sluice waits on an unauthenticated health check: wait here instead.
        s = harness.Sluice(config_text, workers=workers, wait=False)
        self.addCleanup(self._stop_and_check, s)
        self.sluice = s

        def healthy():
            try:
                return request(s.port, "GET", "/_sluice/health", headers=AUTH, timeout=2).status == 200
            except OSError:
                return s.proc.poll() is not None and "exited"
        self.assertIs(harness.wait_for(healthy, 10), True, "sluice did not start" + self.diag())
        return s

    def scrape(self, headers=None):
        import test_metrics
        r = request(self.sluice.port, "GET", "/_sluice/metrics", headers=headers)
        self.assertEqual(r.status, 200, r)
        return test_metrics.parse_prometheus(r.body.decode())[1]

    def reloads(self, result, headers=None):
        return self.scrape(headers).get(("sluice_reloads_total", frozenset({("result", result)})), 0.0)

    def upstream_model(self, headers=None):
        self.mock.reset()
        self.mock.enqueue(json_scene(CHAT_JSON))
        r = self.post("/v1/chat/completions", chat("whatever"), headers=headers)
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        return json.loads(self.only_request()["body"])["model"]

    def post_reload(self, headers=None):
        return request(self.sluice.port, "POST", "/_sluice/reload", headers=headers, timeout=30)


class ReloadBindTest(ReloadCase):
    def test_reload_cannot_drop_auth_from_a_bound_public_socket(self):
        s = self.start_authed(public(self.mock.port, "model-A"))
        keyed = {"Authorization": "Bearer " + KEY}
        self.assertEqual(self.post("/v1/chat/completions", chat("gpt-4.1")).status, 401)
        self.assertEqual(self.upstream_model(keyed), "model-A")
        failed = self.reloads("failed", AUTH)

        # A config that is fine for loopback, without keys or admin token.
        s.write_config(routed(self.mock.port, "model-B"))
        s.reload()
        self.assertTrue(harness.wait_for(lambda: self.reloads("failed", AUTH) >= failed + 1, 10),
                        "SIGHUP reload not refused" + self.diag())
        self.assertIn("listen: sluice is bound to 0.0.0.0:%d" % s.port, s.stderr())
        for _ in range(10):   # fresh connections: both workers
            r = self.post("/v1/chat/completions", chat("gpt-4.1"))
            self.assertEqual(r.status, 401, "the public socket answers without a key: %r%s" % (r, self.diag()))
        self.assertEqual(request(s.port, "GET", "/_sluice/health").status, 401)
        self.assertEqual(self.upstream_model(keyed), "model-A", "the refused config took effect")

        # POST /_sluice/reload still needs the running admin token, and says why it refuses.
        self.assertEqual(self.post_reload().status, 401)
        r = self.post_reload(AUTH)
        self.assertEqual(r.status, 500, "%r%s" % (r, self.diag()))
        body = r.json()
        self.assertIs(body["reloaded"], False)
        self.assertIn("listen: sluice is bound to 0.0.0.0", body["error"]["message"])
        self.assertIn("restart", body["error"]["message"])
        self.assertEqual(self.reloads("failed", AUTH), failed + 2)
        self.assertEqual(self.post("/v1/chat/completions", chat("gpt-4.1")).status, 401)

        # The same listen address with keys and token reloads fine.
        s.write_config(public(self.mock.port, "model-C"))
        r = self.post_reload(AUTH)
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(r.json(), {"reloaded": True, "workers": 2})
        self.assertEqual({self.upstream_model(keyed) for _ in range(10)}, {"model-C"})

    def test_listen_change_on_loopback_is_refused_too(self):
        s = self.start_sluice(routed(self.mock.port, "model-A"), workers=2)
        other = harness.free_port()
        s.write_config(routed(self.mock.port, "model-B").replace("@PORT@", str(other)))
        r = self.post_reload()
        self.assertEqual(r.status, 500, "%r%s" % (r, self.diag()))
        self.assertIn("listen", r.json()["error"]["message"])
        self.assertEqual(self.upstream_model(), "model-A")


# Fails to load only in worker 2: one worker's failure must fail the round
# for every worker (nobody switches) and count as one failed reload.
ONLY_WORKER_2_FAILS = """if require("sluice.core").worker_id == 2 then error("worker 2 refuses this config") end
"""


class ReloadCountTest(ReloadCase):
    def test_each_reload_is_counted_once_with_its_result(self):
        s = self.start_sluice(routed(self.mock.port, "model-A"), workers=2)
        ok0, failed0 = self.reloads("ok"), self.reloads("failed")

        s.write_config("return { this is not lua")
        n_failed = 0
        for i in range(12):
            if i % 3 == 2:   # SIGHUP: wait for it to be counted before the next one
                want = failed0 + n_failed + 1
                s.reload()
                self.assertTrue(harness.wait_for(lambda: self.reloads("failed") >= want, 10),
                                "failed reloads under-counted: %d of %d"
                                % (self.reloads("failed") - failed0, n_failed + 1))
            else:            # POST: answered after the round; lands on either worker
                r = self.post_reload()
                self.assertEqual(r.status, 500, "%r%s" % (r, self.diag()))
            n_failed += 1
        time.sleep(0.3)   # any stray extra count would land by now
        self.assertEqual(self.reloads("failed") - failed0, n_failed, "failed reloads miscounted")
        self.assertEqual(self.reloads("ok") - ok0, 0)

        s.write_config(routed(self.mock.port, "model-B"))
        for i in range(6):
            if i % 3 == 2:
                want = ok0 + i + 1
                s.reload()
                self.assertTrue(harness.wait_for(lambda: self.reloads("ok") >= want, 10),
                                "ok reloads under-counted: %d of %d" % (self.reloads("ok") - ok0, i + 1))
            else:
                r = self.post_reload()
                self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        time.sleep(0.3)
        self.assertEqual(self.reloads("ok") - ok0, 6, "ok reloads miscounted")
        self.assertEqual(self.reloads("failed") - failed0, n_failed)
        self.assertEqual({self.upstream_model() for _ in range(10)}, {"model-B"})

    def test_a_reload_one_worker_fails_is_one_failed_reload_and_changes_nothing(self):
        s = self.start_sluice(routed(self.mock.port, "model-A"), workers=2)
        ok0, failed0 = self.reloads("ok"), self.reloads("failed")
        s.write_config(ONLY_WORKER_2_FAILS + routed(self.mock.port, "model-B"))
        s.reload()
        self.assertTrue(harness.wait_for(lambda: self.reloads("failed") > failed0, 10),
                        "a reload that failed in one worker was not counted failed" + self.diag())
        time.sleep(0.3)
        self.assertEqual(self.reloads("failed") - failed0, 1)
        self.assertEqual(self.reloads("ok") - ok0, 0)
        self.assertIn("worker 2 refuses this config", s.stderr())
        self.assertEqual({self.upstream_model() for _ in range(12)}, {"model-A"},
                         "a worker took a config the round refused")


class StartupTest(ReloadCase):
    def test_nothing_is_answered_until_every_worker_has_read_the_config(self):
        # Worker 2 takes a second to load. If worker 1 answered meanwhile, a
        # deploy script that saw health and rewrote the config would have
        # worker 2 start on the new file (or die on a broken one).
        slow = 'if require("sluice.core").worker_id == 2 then os.execute("sleep 1") end\n'
        s = self.start_sluice(slow + routed(self.mock.port, "model-A"), workers=2)
        s.write_config("return { this is not lua")
        time.sleep(1.5)
        self.assertIsNone(s.proc.poll(), "a worker read the config after sluice answered" + self.diag())
        self.assertEqual({self.upstream_model() for _ in range(10)}, {"model-A"})


if __name__ == "__main__":
    harness.main()
