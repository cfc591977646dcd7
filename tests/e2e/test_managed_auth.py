"""test_managed_auth — suppliers whose tokens come from a token endpoint.

`auth = { type = "managed", ... }` makes sluice fetch a short-lived token
(OAuth2 client credentials, or a generic JSON endpoint), cache it in the
store every worker shares, refresh it shortly before it expires, fetch it
once however many requests need it at the same moment, and on an upstream
401/403 drop it, fetch a new one and retry the request once. A token
endpoint that is down or answers nonsense is the client's 502, in its own
protocol's shape, naming the supplier and the cause, and never a hang. The
client secret and the tokens never reach the access log, stderr or history.

The mock upstream plays both the token endpoint (/oauth/token, /tokens/...)
and the LLM API (/v1/..., counted separately by path).
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import request  # noqa: E402

CLIENT_SECRET = "cs-managed-SECRET-7731"
CHAT = '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}'
ANTH = '{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
OK_CHAT = {"path": "/v1/chat", "body": json.dumps({
    "id": "c1", "object": "chat.completion", "model": "gpt-4.1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})}


def token_scene(token, expires_in=3600, delay_ms=0, repeat=1, path="/oauth/token"):
    return {"path": path, "delay_ms": delay_ms, "repeat": repeat,
            "body": json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": expires_in})}


class ManagedAuthTest(harness.SluiceTestCase):
    def config(self, auth=None, extra_auth="", protocol="openai-chat", history_dir=None):
        base = "http://%s:%d" % (harness.HOST, self.mock.port)
        auth = auth or """{ type = "managed", token_url = "%s/oauth/token", client_id = "sluice-test",
        client_secret = "%s", scope = "llm.invoke"%s }""" % (base, CLIENT_SECRET, extra_auth)
        base_url = base + ("/v1" if protocol == "openai-chat" else "")
        supplier = '    acme = { protocol = "%s", base_url = "%s", auth = %s },\n' % (protocol, base_url, auth)
        service = "chat" if protocol == "openai-chat" else "claude"
        routes = "{ %s = { { match = \"*\", supplier = \"acme\" } } }" % service
        extra = "  retry = { attempts = 1 },\n"
        if history_dir:
            extra += '  history = { path = "%s/history.db" },\n' % history_dir
        return harness.sluice_config(self.mock.port, suppliers_extra=supplier, routes=routes, extra=extra)

    def by_path(self, prefix):
        return [r for r in self.mock.requests() if r["path"].startswith(prefix)]

    def bearer(self, req):
        return harness.header_values(req, "authorization")

    # ------------------------------------------------------------------ fetching and caching

    def test_first_request_fetches_a_token_and_later_ones_reuse_it(self):
        s = self.start_sluice(self.config())
        self.mock.enqueue([token_scene("tok-first"), dict(OK_CHAT, repeat=3)])
        for _ in range(3):
            r = request(s.port, "POST", "/v1/chat/completions", body=CHAT)
            self.assertEqual(r.status, 200, repr(r) + self.diag())
        fetches = self.by_path("/oauth/token")
        self.assertEqual(len(fetches), 1, "the token must be fetched once and cached")
        form = urllib.parse.parse_qs(fetches[0]["body"])
        self.assertEqual(form["grant_type"], ["client_credentials"])
        self.assertEqual(form["client_id"], ["sluice-test"])
        self.assertEqual(form["client_secret"], [CLIENT_SECRET])
        self.assertEqual(form["scope"], ["llm.invoke"])
        self.assertEqual(harness.header_values(fetches[0], "content-type"), ["application/x-www-form-urlencoded"])
        calls = self.by_path("/v1/chat")
        self.assertEqual(len(calls), 3)
        for c in calls:
            self.assertEqual(self.bearer(c), ["Bearer tok-first"])

    def test_client_leaving_during_a_fetch_frees_the_others(self):
        # The first request's client leaves while its token fetch hangs; the
        # next request must fetch at once, not wait out the abandoned lock.
        s = self.start_sluice(self.config())
        self.mock.enqueue([token_scene("tok-slow", delay_ms=8000), token_scene("tok-b"), OK_CHAT])
        a = harness.RawConn(s.port)
        a.send(harness.build_request("POST", "/v1/chat/completions", CHAT.encode(),
                                     {"content-type": "application/json"}, port=s.port))
        self.assertTrue(harness.wait_for(lambda: len(self.by_path("/oauth/token")) == 1, timeout=5))
        a.close()
        time.sleep(0.3)
        t0 = time.monotonic()
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT)
        self.assertEqual(r.status, 200, repr(r) + self.diag())
        self.assertLess(time.monotonic() - t0, 4.0, "waited for a lock its holder abandoned")
        self.assertEqual(self.bearer(self.by_path("/v1/chat")[0]), ["Bearer tok-b"])

    def test_fifty_concurrent_requests_fetch_the_token_once(self):
        # Two workers: the single flight must hold across threads, not just coroutines.
        s = self.start_sluice(self.config(), workers=2)
        self.mock.enqueue([token_scene("tok-shared", delay_ms=400, repeat=50), dict(OK_CHAT, repeat=50)])
        results = [None] * 50

        def one(i):
            try:
                results[i] = request(s.port, "POST", "/v1/chat/completions", body=CHAT, timeout=20).status
            except Exception as e:  # noqa: BLE001 - reported below
                results[i] = repr(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(results, [200] * 50, self.diag())
        self.assertEqual(len(self.by_path("/oauth/token")), 1, "50 concurrent requests must fetch the token once")
        calls = self.by_path("/v1/chat")
        self.assertEqual(len(calls), 50)
        self.assertTrue(all(self.bearer(c) == ["Bearer tok-shared"] for c in calls))

    def test_token_is_refreshed_shortly_before_it_expires(self):
        # expires_in = 2 s: with refresh_before = 60 capped at half the lifetime,
        # it is fresh for 1 s, then the next request fetches a new one.
        s = self.start_sluice(self.config())
        self.mock.enqueue([token_scene("tok-short", expires_in=2), token_scene("tok-next", expires_in=3600),
                           dict(OK_CHAT, repeat=3)])
        self.assertEqual(request(s.port, "POST", "/v1/chat/completions", body=CHAT).status, 200)
        self.assertEqual(request(s.port, "POST", "/v1/chat/completions", body=CHAT).status, 200)
        self.assertEqual(len(self.by_path("/oauth/token")), 1)
        time.sleep(1.3)
        self.assertEqual(request(s.port, "POST", "/v1/chat/completions", body=CHAT).status, 200)
        self.assertEqual(len(self.by_path("/oauth/token")), 2, "no refresh before expiry")
        self.assertEqual([self.bearer(c) for c in self.by_path("/v1/chat")],
                         [["Bearer tok-short"], ["Bearer tok-short"], ["Bearer tok-next"]])

    # ------------------------------------------------------------------ 401 / 403

    def test_upstream_401_refetches_once_and_retries(self):
        s = self.start_sluice(self.config())
        self.mock.enqueue([token_scene("tok-old"), token_scene("tok-new"),
                           {"path": "/v1/chat", "status": 401,
                            "body": '{"error":{"message":"token expired","type":"invalid_request_error"}}'},
                           OK_CHAT])
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT)
        self.assertEqual(r.status, 200, repr(r) + self.diag())
        self.assertEqual(r.json()["choices"][0]["message"]["content"], "hello")
        self.assertEqual(len(self.by_path("/oauth/token")), 2)
        self.assertEqual([self.bearer(c) for c in self.by_path("/v1/chat")],
                         [["Bearer tok-old"], ["Bearer tok-new"]])
        # The fresh token is the cached one now.
        self.mock.enqueue(OK_CHAT)
        self.assertEqual(request(s.port, "POST", "/v1/chat/completions", body=CHAT).status, 200)
        self.assertEqual(len(self.by_path("/oauth/token")), 2)
        self.assertEqual(self.bearer(self.by_path("/v1/chat")[-1]), ["Bearer tok-new"])

    def test_upstream_that_keeps_refusing_gets_one_retry_only(self):
        s = self.start_sluice(self.config())
        self.mock.enqueue([token_scene("tok-a"), token_scene("tok-b"), token_scene("tok-c"),
                           {"path": "/v1/chat", "status": 403, "repeat": 5,
                            "body": '{"error":{"message":"forbidden","type":"permission_error"}}'}])
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT)
        self.assertEqual(r.status, 403, repr(r))
        self.assertEqual(len(self.by_path("/v1/chat")), 2, "a refused request is retried exactly once")
        self.assertEqual(len(self.by_path("/oauth/token")), 2)

    # ------------------------------------------------------------------ failing token endpoints

    def assert_502_naming(self, r, *words):
        self.assertEqual(r.status, 502, repr(r) + self.diag())
        msg = r.json()["error"]["message"]
        self.assertIn("acme", msg)
        for w in words:
            self.assertIn(w, msg)
        self.assertNotIn(CLIENT_SECRET, r.body.decode())
        return msg

    def test_token_endpoint_down_is_a_502_naming_the_cause(self):
        dead = harness.free_port()
        auth = """{ type = "managed", token_url = "http://127.0.0.1:%d/oauth/token", client_id = "x",
        client_secret = "%s", timeout = 3 }""" % (dead, CLIENT_SECRET)
        s = self.start_sluice(self.config(auth=auth))
        t0 = time.monotonic()
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT, timeout=15)
        self.assertLess(time.monotonic() - t0, 10, "a dead token endpoint must not hang the request")
        self.assert_502_naming(r, "token endpoint unreachable")
        self.assertEqual(self.by_path("/v1/"), [], "nothing may go upstream without a token")

    def test_token_endpoint_error_status_is_a_502_naming_it(self):
        s = self.start_sluice(self.config())
        self.mock.enqueue({"path": "/oauth/token", "status": 401,
                           "body": '{"error":"invalid_client","error_description":"bad secret"}'})
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT)
        msg = self.assert_502_naming(r, "token endpoint returned HTTP 401", "invalid_client")
        self.assertIn("acme", msg)
        # The endpoint recovers: the next request fetches again and succeeds.
        self.mock.enqueue([token_scene("tok-late"), OK_CHAT])
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT)
        self.assertEqual(r.status, 200, repr(r) + self.diag())

    def test_nonsense_from_the_token_endpoint_is_a_502(self):
        s = self.start_sluice(self.config())
        self.mock.enqueue([{"path": "/oauth/token", "body": '{"token_type":"Bearer","expires_in":60}'},
                           {"path": "/oauth/token", "body": "<html>login</html>",
                            "headers": {"Content-Type": "text/html"}}])
        self.assert_502_naming(request(s.port, "POST", "/v1/chat/completions", body=CHAT),
                               "no access_token in the token response")
        self.assert_502_naming(request(s.port, "POST", "/v1/chat/completions", body=CHAT), "not JSON")

    def test_anthropic_client_gets_the_502_in_its_shape(self):
        s = self.start_sluice(self.config(protocol="anthropic"))
        self.mock.enqueue({"path": "/oauth/token", "status": 503, "body": "{}"})
        r = request(s.port, "POST", "/v1/messages", body=ANTH,
                    headers={"anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 502, repr(r))
        body = r.json()
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "api_error")
        self.assertIn("acme", body["error"]["message"])
        self.assertIn("HTTP 503", body["error"]["message"])

    # ------------------------------------------------------------------ generic endpoints

    def test_generic_endpoint_with_json_body_and_token_path(self):
        base = "http://%s:%d" % (harness.HOST, self.mock.port)
        auth = """{ type = "managed",
        request = { method = "POST", url = "%s/tokens/issue", headers = { ["x-tenant"] = "t1" },
                    body = { key_id = "k1", key_secret = "%s" } },
        token_path = "data.jwt", expires_path = "data.ttl", header = "x-acme-token", prefix = "" }""" % (
            base, CLIENT_SECRET)
        s = self.start_sluice(self.config(auth=auth))
        self.mock.enqueue([{"path": "/tokens/issue", "body": '{"data":{"jwt":"jwt-123","ttl":"600"}}'}, OK_CHAT])
        r = request(s.port, "POST", "/v1/chat/completions", body=CHAT)
        self.assertEqual(r.status, 200, repr(r) + self.diag())
        fetch = self.by_path("/tokens/issue")[0]
        self.assertEqual(json.loads(fetch["body"]), {"key_id": "k1", "key_secret": CLIENT_SECRET})
        self.assertEqual(harness.header_values(fetch, "x-tenant"), ["t1"])
        call = self.by_path("/v1/chat")[0]
        self.assertEqual(harness.header_values(call, "x-acme-token"), ["jwt-123"])
        self.assertEqual(self.bearer(call), [])

    # ------------------------------------------------------------------ secrets

    def test_secret_and_tokens_stay_out_of_logs_and_history(self):
        d = tempfile.mkdtemp(prefix="sluice-managed-")
        self.addCleanup(shutil.rmtree, d, True)
        cfg = self.config(history_dir=d).replace('access = "@ACCESS_LOG@"', 'access = "@ACCESS_LOG@", level = "debug"')
        s = self.start_sluice(cfg)
        self.mock.enqueue([token_scene("tok-SECRET-1"), token_scene("tok-SECRET-2"),
                           {"path": "/v1/chat", "status": 401, "body": '{"error":{"message":"expired"}}'}, OK_CHAT,
                           {"path": "/oauth/token", "status": 500, "body": '{"error":"server_error"}'}])
        self.assertEqual(request(s.port, "POST", "/v1/chat/completions", body=CHAT).status, 200)
        # Drop the cached token so that the next request meets the failing endpoint.
        self.mock.enqueue([{"path": "/v1/chat", "status": 401, "body": "{}", "repeat": 2}])
        self.assertEqual(request(s.port, "POST", "/v1/chat/completions", body=CHAT).status, 502)
        harness.wait_for(lambda: len(s.access_log().splitlines()) >= 2, 5)
        hist = request(s.port, "GET", "/_sluice/requests")
        self.assertEqual(hist.status, 200)
        records = hist.json()["items"]
        self.assertGreaterEqual(len(records), 2, hist.body[:500])
        details = "".join(request(s.port, "GET", "/_sluice/requests/" + rec["id"]).body.decode()
                          for rec in records)
        for where, text in (("access log", s.access_log()), ("stderr", s.stderr()),
                            ("history", hist.body.decode() + details)):
            for secret in (CLIENT_SECRET, "tok-SECRET-1", "tok-SECRET-2"):
                self.assertNotIn(secret, text, "%s leaked into the %s" % (secret, where))


if __name__ == "__main__":
    harness.main()
