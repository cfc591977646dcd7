"""test_gateway_tenants — gateway keys as tenants (issue 15).

A `keys` entry written as a table names a tenant: `{ id, key | key_sha256,
models, services, rate, budget, expires }`. Its id goes into the history,
the access log, the usage view and the metrics; its limits are enforced
before anything goes upstream and answered in the client's own protocol
shape: 429 with Retry-After for a rate or budget reached, 403 for a model
or service the key may not use, 401 for an expired key. Tokens and cost
are charged when a request ends, from what was recorded. Counters are
shared by the workers of one process, and by every instance through Redis
when sessions use it; with Redis gone each process counts alone and no
request fails. Windows are shortened in the config (`rate.window`,
`budget.day_window`), so nothing here sleeps longer than a few seconds.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import request  # noqa: E402

ALICE = "gw-alice-key-7731-secret"
BOB = "gw-bob-key-4410-secret"
CAROL = "gw-carol-key-0921-secret"   # given to sluice as its SHA-256 only
OLD = "gw-old-key-5555-secret"
PLAIN = "gw-plain-key-1234-secret"   # a plain string key beside the tenants
UP_AN, UP_OA = "sk-up-an-secret-1", "sk-up-oa-secret-1"
SECRETS = (ALICE, BOB, CAROL, OLD, PLAIN, UP_AN, UP_OA, hashlib.sha256(CAROL.encode()).hexdigest())

ANTH_V = {"anthropic-version": "2023-06-01"}

PRICES = """  prices = { ["gpt-4*"] = { input = 2.00, output = 8.00 }, ["claude-*"] = { input = 3.00, output = 15.00 } },
"""


def chat_json(prompt, completion):
    return json.dumps({
        "id": "chatcmpl-t", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}})


def anthropic_json(inp, out):
    return json.dumps({
        "id": "msg_t", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": inp, "output_tokens": out}})


def scene(body, repeat=1):
    return {"status": 200, "headers": {"Content-Type": "application/json"}, "body": body, "repeat": repeat}


def tenants_config(mock_port, history_dir, keys, extra="", history=True):
    base = "http://%s:%d" % (harness.HOST, mock_port)
    return """
return {
  listen = { "127.0.0.1:@PORT@" },
  log = { access = "@ACCESS_LOG@" },
  retry = { attempts = 1 },
  history = %(history)s,
%(prices)s  keys = {
%(keys)s  },
  suppliers = {
    oa = { protocol = "openai-chat", base_url = "%(base)s/v1", auth = { type = "bearer", token = "%(oa)s" },
           models = { "gpt-4.1", "gpt-4.1-mini", "o3" } },
    an = { protocol = "anthropic", base_url = "%(base)s", auth = { type = "header", name = "x-api-key", value = "%(an)s" },
           models = { "claude-sonnet-4-5" } },
    rs = { protocol = "openai-responses", base_url = "%(base)s/v1", auth = { type = "bearer", token = "%(oa)s" } },
  },
  routes = {
    claude = { { match = "*", supplier = "an" } },
    chat = { { match = "*", supplier = "oa" } },
    codex = { { match = "*", supplier = "rs" } },
  },
%(extra)s}
""" % {"history": '{ path = "%s/history.db" }' % history_dir if history else "false", "prices": PRICES, "keys": keys, "base": base, "oa": UP_OA, "an": UP_AN,
       "extra": extra}


def wait_fresh_window(window, need):
    """Sleep until at least `need` seconds are left in the current fixed
    window of `window` seconds (windows start at multiples of it)."""
    left = window - (time.time() % window)
    if left < need:
        time.sleep(left + 0.05)


class TenantCase(harness.SluiceTestCase):
    def start(self, keys, workers=1, extra="", history=True):
        d = tempfile.mkdtemp(prefix="sluice-tenants-")
        self.addCleanup(shutil.rmtree, d, True)
        return self.start_sluice(config_text=tenants_config(self.mock.port, d, keys, extra, history),
                                 workers=workers)

    def claude(self, key, model="claude-sonnet-4-5", port=None):
        return request(port or self.sluice.port, "POST", "/v1/messages",
                       body={"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
                       headers=dict(ANTH_V, **{"x-api-key": key}))

    def chat(self, key, model="gpt-4.1", port=None):
        return request(port or self.sluice.port, "POST", "/v1/chat/completions",
                       body={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                       headers={"Authorization": "Bearer " + key})

    def admin(self, path, port=None):
        r = request(port or self.sluice.port, "GET", path)
        self.assertEqual(r.status, 200, "%s: %r%s" % (path, r, self.diag()))
        return r

    def upstream_count(self):
        return len(self.mock.requests())


# alice: Anthropic models on the claude service, 3 requests per window;
# bob: gpt-4.1* on chat and codex, 3 requests per window. An hour-long
# window keeps the count from turning under a slow test.
TWO_KEYS = """    { id = "alice", key = "%s", models = { "claude-*" }, services = { "claude" },
      rate = { requests_per_minute = 3, window = 3600 } },
    { id = "bob", key = "%s", models = { "gpt-4.1*" }, services = { "chat", "codex" },
      rate = { requests_per_minute = 3, tokens_per_minute = 100000, window = 3600 } },
    "%s",
""" % (ALICE, BOB, PLAIN)


class RateLimitTest(TenantCase):
    def test_the_request_past_the_limit_is_429_in_the_clients_shape(self):
        wait_fresh_window(3600, 30)
        self.start(TWO_KEYS)
        for i in range(3):
            self.assertEqual(self.claude(ALICE).status, 200, "alice #%d%s" % (i + 1, self.diag()))
        r = self.claude(ALICE)
        self.assertEqual(r.status, 429, repr(r))
        body = r.json()
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "rate_limit_error")
        msg = body["error"]["message"]
        self.assertIn("requests_per_minute", msg)
        self.assertIn("resets in", msg)
        retry_after = int(r.header("retry-after"))
        self.assertTrue(1 <= retry_after <= 3600, retry_after)
        self.assertEqual(self.upstream_count(), 3, "the refused request must not reach the upstream")

        # bob has his own counter: alice's use does not touch it
        for i in range(3):
            self.assertEqual(self.chat(BOB).status, 200, "bob #%d%s" % (i + 1, self.diag()))
        r = self.chat(BOB)
        self.assertEqual(r.status, 429, repr(r))
        err = r.json()["error"]
        self.assertEqual(err["code"], "rate_limit_exceeded")
        self.assertIn("requests_per_minute", err["message"])
        self.assertTrue(1 <= int(r.header("retry-after")) <= 3600)
        self.assertEqual(self.upstream_count(), 6)

        # a plain string key has no limits, as before
        for _ in range(5):
            self.assertEqual(self.chat(PLAIN).status, 200, self.diag())

        keys = {k["id"]: k for k in self.admin("/_sluice/keys").json()["items"]}
        self.assertEqual(set(keys), {"alice", "bob", "key#3"})
        rpm = keys["alice"]["limits"]["requests_per_minute"]
        self.assertEqual((rpm["limit"], rpm["used"], rpm["remaining"], rpm["window"]), (3, 3, 0, 3600))
        self.assertEqual(keys["bob"]["limits"]["requests_per_minute"]["used"], 3)

    def test_the_window_turns_and_requests_flow_again(self):
        keys = '    { id = "quick", key = "%s", rate = { requests_per_minute = 2, window = 3 } },\n' % ALICE
        self.start(keys)
        wait_fresh_window(3, 2.5)
        self.assertEqual(self.chat(ALICE).status, 200, self.diag())
        self.assertEqual(self.chat(ALICE).status, 200, self.diag())
        r = self.chat(ALICE)
        self.assertEqual(r.status, 429, repr(r))
        self.assertIn(r.header("retry-after"), ("1", "2", "3"))
        self.assertIn("a window of 3 s", r.json()["error"]["message"])
        time.sleep(int(r.header("retry-after")) + 0.1)
        self.assertEqual(self.chat(ALICE).status, 200, "a new window starts from zero" + self.diag())


class BudgetTest(TenantCase):
    def test_a_budget_spent_by_recorded_cost_refuses_until_the_window_turns(self):
        # one answer of 1000 + 1000 tokens at gpt-4.1's prices costs $0.01
        keys = ('    { id = "carol", key_sha256 = "%s", budget = { usd_per_day = 0.005, day_window = 5 } },\n'
                % hashlib.sha256(CAROL.encode()).hexdigest())
        self.start(keys)
        self.mock.enqueue(scene(chat_json(1000, 1000), repeat=2))
        wait_fresh_window(5, 4)
        r = self.chat(CAROL)
        self.assertEqual(r.status, 200, "a request under the budget goes through whole" + self.diag())
        self.assertEqual(r.json()["usage"]["completion_tokens"], 1000)
        r = self.chat(CAROL)
        self.assertEqual(r.status, 429, repr(r))
        self.assertIn("usd_per_day", r.json()["error"]["message"])
        retry_after = int(r.header("retry-after"))
        self.assertTrue(1 <= retry_after <= 5, retry_after)
        self.assertEqual(self.upstream_count(), 1)
        spent = self.admin("/_sluice/keys").json()["items"][0]["limits"]["usd_per_day"]
        self.assertAlmostEqual(spent["used"], 0.01, 6)
        self.assertEqual(spent["remaining"], 0)
        time.sleep(retry_after + 0.1)
        self.assertEqual(self.chat(CAROL).status, 200, "the next window has a fresh budget" + self.diag())

    def test_token_rate_counts_recorded_tokens_when_the_request_ends(self):
        keys = ('    { id = "tok", key = "%s", rate = { tokens_per_minute = 1000, window = 3600 } },\n' % BOB)
        wait_fresh_window(3600, 30)
        self.start(keys)
        # a streamed answer that takes a while: in flight past nothing, charged at its end
        events = [harness.chat_chunk({"role": "assistant", "content": "o"}),
                  harness.chat_chunk({"content": "k"}, finish="stop"),
                  harness.chat_chunk({}, usage={"prompt_tokens": 700, "completion_tokens": 600,
                                                "total_tokens": 1300}),
                  "data: [DONE]\n\n"]
        self.mock.enqueue({"status": 200, "headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": e, "delay_ms": 50} for e in events]})
        r = request(self.sluice.port, "POST", "/v1/chat/completions",
                    body={"model": "gpt-4.1", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": "Bearer " + BOB})
        self.assertEqual(r.status, 200, self.diag())
        self.assertIn(b"[DONE]", r.body, "the admitted stream is never cut")
        used = lambda: self.admin("/_sluice/keys").json()["items"][0]["limits"]["tokens_per_minute"]["used"]
        self.assertEqual(harness.wait_for(lambda: used() == 1300, 5), True, used())
        r = self.chat(BOB)
        self.assertEqual(r.status, 429, repr(r))
        self.assertIn("tokens_per_minute", r.json()["error"]["message"])
        self.assertEqual(self.upstream_count(), 1)

    def test_without_a_history_passthrough_usage_is_still_charged(self):
        # the core reads a passthrough answer's usage for the history; a key
        # that charges tokens or cost needs it with the history off too
        keys = ('    { id = "tok", key = "%s", rate = { tokens_per_minute = 1000, window = 3600 },\n'
                '      budget = { usd_per_day = 100 } },\n' % BOB)
        wait_fresh_window(3600, 30)
        self.start(keys, history=False)
        self.mock.enqueue(scene(chat_json(900, 200)))
        self.assertEqual(self.chat(BOB).status, 200, self.diag())
        limits = lambda: self.admin("/_sluice/keys").json()["items"][0]["limits"]
        self.assertEqual(harness.wait_for(lambda: limits()["tokens_per_minute"]["used"] == 1100, 5), True, limits())
        self.assertAlmostEqual(limits()["usd_per_day"]["used"], (900 * 2 + 200 * 8) / 1e6, 9)
        self.assertEqual(self.chat(BOB).status, 429)


ACCESS = """    { id = "alice", key = "%s", models = { "claude-*" } },
    { id = "bob", key = "%s", services = { "chat" } },
    { id = "old", key = "%s", expires = "2020-01-01" },
    { id = "carol", key_sha256 = "%s", expires = "2999-12-31T23:59:59Z" },
    "%s",
""" % (ALICE, BOB, OLD, hashlib.sha256(CAROL.encode()).hexdigest(), PLAIN)


class AccessTest(TenantCase):
    def test_a_model_outside_the_allow_list_is_403(self):
        self.start(ACCESS)
        r = self.claude(ALICE, model="gpt-4.1")
        self.assertEqual(r.status, 403, repr(r))
        self.assertEqual(r.json()["error"]["type"], "permission_error")
        self.assertIn("may not use model gpt-4.1", r.json()["error"]["message"])
        r = self.chat(ALICE, model="gpt-4.1")
        self.assertEqual(r.status, 403, repr(r))
        self.assertEqual(r.json()["error"]["code"], "permission_denied")
        self.assertEqual(self.upstream_count(), 0)
        self.assertEqual(self.claude(ALICE, model="claude-sonnet-4-5").status, 200, self.diag())
        self.assertEqual(self.chat(ALICE, model="Claude-Haiku-4").status, 200, "globs ignore case")
        # the model list shows only what the key may use
        ids = [m["id"] for m in request(self.sluice.port, "GET", "/v1/models",
                                        headers={"Authorization": "Bearer " + ALICE}).json()["data"]]
        self.assertIn("claude-sonnet-4-5", ids)
        self.assertNotIn("gpt-4.1", ids)

    def test_a_service_outside_the_allow_list_is_403(self):
        self.start(ACCESS)
        r = self.claude(BOB)
        self.assertEqual(r.status, 403, repr(r))
        self.assertEqual(r.json()["error"]["type"], "permission_error")
        self.assertIn("may not use service claude", r.json()["error"]["message"])
        r = request(self.sluice.port, "POST", "/v1/responses", body={"model": "gpt-4.1", "input": "hi"},
                    headers={"Authorization": "Bearer " + BOB})
        self.assertEqual(r.status, 403, repr(r))
        self.assertEqual(self.upstream_count(), 0)
        self.assertEqual(self.chat(BOB).status, 200, self.diag())

    def test_an_expired_key_is_401(self):
        self.start(ACCESS)
        r = self.claude(OLD)
        self.assertEqual(r.status, 401, repr(r))
        self.assertEqual(r.json()["error"]["type"], "authentication_error")
        self.assertIn("expired", r.json()["error"]["message"])
        r = self.chat(OLD)
        self.assertEqual(r.status, 401, repr(r))
        self.assertEqual(r.json()["error"]["code"], "invalid_api_key")
        r = request(self.sluice.port, "POST", "/v1/nothing", body="{}", headers={"Authorization": "Bearer " + OLD})
        self.assertEqual(r.status, 401, "an expired key learns nothing about paths either: %r" % r)
        self.assertEqual(self.upstream_count(), 0)

    def test_a_key_given_by_its_sha256_works_and_its_text_never_shows(self):
        self.start(ACCESS)
        self.assertEqual(self.chat(CAROL).status, 200, self.diag())
        r = self.chat(CAROL[:-1] + "X")
        self.assertEqual(r.status, 401, repr(r))
        self.assertEqual(self.upstream_count(), 1)

    def test_the_id_is_the_tenant_in_history_usage_access_log_and_metrics(self):
        self.start(ACCESS)
        self.mock.enqueue(scene(chat_json(10, 5), repeat=3))
        self.assertEqual(self.chat(CAROL).status, 200, self.diag())
        self.assertEqual(self.chat(BOB).status, 200, self.diag())
        self.assertEqual(self.chat(PLAIN).status, 200, self.diag())
        self.assertEqual(self.claude(BOB).status, 403)
        items = harness.wait_for(lambda: len(self.admin("/_sluice/requests").json()["items"]) == 4 and
                                 self.admin("/_sluice/requests").json()["items"], 5)
        self.assertTrue(items, self.diag())
        self.assertEqual(sorted(it["key"] for it in items), ["bob", "bob", "carol", "key#5"])
        by_key = {r["key"]: r for r in self.admin("/_sluice/usage?group_by=key").json()["rows"]}
        self.assertEqual(set(by_key), {"bob", "carol", "key#5"})
        self.assertEqual((by_key["bob"]["requests"], by_key["bob"]["errors"]), (2, 1))
        self.assertEqual(by_key["carol"]["output_tokens"], 5)
        harness.wait_for(lambda: len(self.sluice.access_records()) >= 4, 5)
        self.assertEqual(sorted(a["key"] for a in self.sluice.access_records()), ["bob", "bob", "carol", "key#5"])
        metrics = self.admin("/_sluice/metrics").body.decode()
        self.assertIn('sluice_tenant_requests_total{tenant="carol"} 1', metrics)
        self.assertIn('sluice_tenant_requests_total{tenant="bob"} 1', metrics)
        self.assertIn('sluice_tenant_refused_total{tenant="bob"} 1', metrics)
        self.assertNotIn('tenant="key#', metrics, "plain keys are not metric labels")

        keys = self.admin("/_sluice/keys")
        doc = keys.json()
        self.assertEqual([k["id"] for k in doc["items"]], ["alice", "bob", "old", "carol", "key#5"])
        self.assertTrue(doc["items"][2]["expired"])
        self.assertEqual(doc["items"][0]["models"], ["claude-*"])
        config = self.admin("/_sluice/config").body.decode()
        self.assertIn('"id":"carol"', config.replace(" ", ""))
        places = {"/_sluice/keys": keys.body.decode(), "/_sluice/config": config,
                  "/_sluice/requests": json.dumps(items), "access log": self.sluice.access_log(),
                  "stderr": self.sluice.stderr(), "metrics": metrics}
        for where, text in places.items():
            for secret in SECRETS:
                self.assertNotIn(secret, text, "a key or its hash leaked into " + where)

    def test_the_keys_endpoint_needs_the_admin_token(self):
        d = tempfile.mkdtemp(prefix="sluice-tenants-")
        self.addCleanup(shutil.rmtree, d, True)
        # the harness waits on an unauthenticated health check: wait here instead
        s = harness.Sluice(tenants_config(self.mock.port, d, ACCESS,
                                          extra='  admin = { token = "admin-token-for-tenants" },\n'), wait=False)
        self.addCleanup(self._stop_and_check, s)
        self.sluice = s
        auth = {"Authorization": "Bearer admin-token-for-tenants"}

        def up():
            try:
                return request(s.port, "GET", "/_sluice/health", headers=auth, timeout=2).status == 200
            except OSError:
                return s.proc.poll() is not None and "exited"
        self.assertIs(harness.wait_for(up, 10), True, "sluice did not start" + self.diag())
        r = request(self.sluice.port, "GET", "/_sluice/keys")
        self.assertEqual(r.status, 401, repr(r))
        r = request(self.sluice.port, "GET", "/_sluice/keys", headers={"Authorization": "Bearer " + ALICE})
        self.assertEqual(r.status, 401, "a gateway key is not the admin token: %r" % r)
        r = request(self.sluice.port, "GET", "/_sluice/keys",
                    headers={"Authorization": "Bearer admin-token-for-tenants"})
        self.assertEqual(r.status, 200, repr(r))
        self.assertEqual(len(r.json()["items"]), 5)


class CheckTest(TenantCase):
    def test_bad_key_tables_fail_check_naming_the_field(self):
        h = hashlib.sha256(b"x").hexdigest()
        cases = [
            ('{ id = "a", key = "%s", rate = { requests_per_minute = 0 } }' % ALICE,
             "keys[2].rate.requests_per_minute"),
            ('{ id = "a", key = "%s", rate = { request_per_minute = 5 } }' % ALICE, "keys[2].rate.request_per_minute"),
            ('{ id = "a", key = "%s", budget = { usd_per_day = "lots" } }' % ALICE, "keys[2].budget.usd_per_day"),
            ('{ id = "a", key = "%s", key_sha256 = "%s" }' % (ALICE, h), "keys[2]: give exactly one of key or key_sha256"),
            ('{ id = "a" }', "keys[2]: give exactly one"),
            ('{ id = "a", key_sha256 = "abc" }', "keys[2].key_sha256"),
            ('{ id = "a", key = "short" }', "keys[2].key"),
            ('{ id = "a b", key = "%s" }' % ALICE, "keys[2].id"),
            ('{ id = "first", key = "%s" }' % ALICE, "keys[2].id: first is also the id of keys[1]"),
            ('{ id = "a", key = "%s", services = { "claude", "mail" } }' % ALICE, "keys[2].services[2]"),
            ('{ id = "a", key = "%s", expires = "2027-02-30" }' % ALICE, "keys[2].expires"),
            ('{ id = "a", key = "%s", modles = { "x" } }' % ALICE, "keys[2].modles"),
        ]
        d = tempfile.mkdtemp(prefix="sluice-tenants-")
        self.addCleanup(shutil.rmtree, d, True)
        for entry, want in cases:
            with self.subTest(entry=entry):
                cfg = tenants_config(self.mock.port, d, '    { id = "first", key = "%s" },\n    %s,\n' % (BOB, entry))
                code, out = harness.run_check(cfg)
                self.assertNotEqual(code, 0, out)
                self.assertIn(want, out)
                for secret in (ALICE, BOB):
                    self.assertNotIn(secret, out)
        code, out = harness.run_check(tenants_config(self.mock.port, d, TWO_KEYS))
        self.assertEqual(code, 0, out)


class SharedCounterTest(TenantCase):
    def test_two_workers_share_one_counter(self):
        keys = ('    { id = "team", key = "%s", rate = { requests_per_minute = 4, window = 3600 } },\n'
                '    "%s",\n' % (ALICE, PLAIN))
        # Each request names its worker in the log (the `wN:` prefix).
        hook = '  on_request = function(ctx) require("sluice").log("warn", "served " .. ctx.id) end,\n'
        wait_fresh_window(3600, 30)
        self.start(keys, workers=2, extra=hook)
        # One kept-alive connection on each worker: a connection stays on the
        # worker that accepted it, and new ones are spread by SO_REUSEPORT.
        conns = {}
        for i in range(64):
            c = harness.Client(self.sluice.port)
            self.addCleanup(c.close)
            rid = "probe-%d" % i
            r = c.request("POST", "/v1/chat/completions", body={"model": "gpt-4.1", "messages": []},
                          headers={"Authorization": "Bearer " + PLAIN, "x-request-id": rid})
            self.assertEqual(r.status, 200, self.diag())
            line = harness.wait_for(lambda: [l for l in self.sluice.stderr().splitlines()
                                             if l.endswith("served " + rid)], 5)
            worker = line[0].split("] ")[1].split(":")[0]
            conns.setdefault(worker, c)
            if len(conns) == 2:
                break
        self.assertEqual(len(conns), 2, "could not reach both workers: " + self.diag())
        # Alternating between the workers: with a counter per worker, 8 would pass.
        one, two = conns.values()
        statuses = []
        for c in (one, two) * 4:
            statuses.append(c.request("POST", "/v1/chat/completions", body={"model": "gpt-4.1", "messages": []},
                                      headers={"Authorization": "Bearer " + ALICE}).status)
        self.assertEqual(statuses, [200] * 4 + [429] * 4, statuses)
        keys_doc = self.admin("/_sluice/keys").json()
        self.assertEqual(keys_doc["items"][0]["limits"]["requests_per_minute"]["used"], 4)


class RedisCounterTest(TenantCase):
    def test_instances_share_counters_through_redis_and_fall_back_without_failing(self):
        redis = self.start_redis()
        keys = ('    { id = "team", key = "%s", rate = { requests_per_minute = 4, window = 3600 } },\n'
                '    { id = "tok", key = "%s", rate = { tokens_per_minute = 1000, window = 3600 } },\n'
                '    { id = "solo", key = "%s", rate = { requests_per_minute = 2, window = 3600 } },\n'
                '    { id = "spend", key_sha256 = "%s", budget = { usd_per_day = 0.005 } },\n'
                % (ALICE, BOB, PLAIN, hashlib.sha256(CAROL.encode()).hexdigest()))
        extra = ('  sessions = { store = "redis", redis = { url = "redis://127.0.0.1:%d/0", timeout = 0.5 } },\n'
                 % redis.port)
        wait_fresh_window(3600, 60)
        a = self.start(keys, extra=extra)
        b = self.start(keys, extra=extra)
        for s in (a, b):
            self.assertTrue(harness.wait_for(
                lambda: self.admin("/_sluice/health", port=s.port).json().get("redis") == "up", 15))

        # one request counter for both instances: 2 + 2 admitted, then each refuses
        for s in (a, b, a, b):
            self.assertEqual(self.chat(ALICE, port=s.port).status, 200, self.diag())
        for s in (a, b):
            r = self.chat(ALICE, port=s.port)
            self.assertEqual(r.status, 429, repr(r))
            self.assertIsNotNone(r.header("retry-after"))
        self.assertEqual(self.upstream_count(), 4)
        # the counters and the session are read in one round trip per request
        for s in (a, b):
            metrics = self.admin("/_sluice/metrics", port=s.port).body.decode()
            self.assertIn("sluice_redis_round_trips_total 3\n", metrics)
        doc = self.admin("/_sluice/keys", port=b.port).json()
        self.assertEqual(doc["counted"], "redis")
        self.assertEqual(doc["items"][0]["limits"]["requests_per_minute"]["used"], 4)

        # tokens recorded on one instance refuse the next request on the other
        self.mock.enqueue(scene(chat_json(700, 600)))
        self.assertEqual(self.chat(BOB, port=a.port).status, 200, self.diag())
        name = lambda: [n for n in redis.keys("sluice:tenant:tok:tokens_per_minute:*")]
        self.assertTrue(harness.wait_for(lambda: name() and redis.get(name()[0]) == "1300", 5),
                        redis.keys())
        r = self.chat(BOB, port=b.port)
        self.assertEqual(r.status, 429, repr(r))
        self.assertIn("tokens_per_minute", r.json()["error"]["message"])
        self.assertEqual(self.upstream_count(), 5)

        # and so does cost (INCRBYFLOAT): $0.01 spent on one, the budget refuses on the other
        self.mock.enqueue(scene(chat_json(1000, 1000)))
        self.assertEqual(self.chat(CAROL, port=b.port).status, 200, self.diag())
        spent = lambda: [redis.get(n) for n in redis.keys("sluice:tenant:spend:usd_per_day:*")]
        self.assertTrue(harness.wait_for(lambda: spent() and abs(float(spent()[0]) - 0.01) < 1e-9, 5), spent())
        r = self.chat(CAROL, port=a.port)
        self.assertEqual(r.status, 429, repr(r))
        self.assertIn("usd_per_day", r.json()["error"]["message"])
        self.assertEqual(self.upstream_count(), 6)
        dump = "".join(n + (redis.get(n) or "") for n in redis.keys())
        for secret in SECRETS:
            self.assertNotIn(secret, dump, "a key or its hash in Redis")

        # Redis goes away: no request fails, and each process counts alone
        redis.stop()
        for s in (a, b):
            self.assertTrue(harness.wait_for(
                lambda: self.admin("/_sluice/health", port=s.port).json().get("redis") == "down", 15))
        self.assertEqual([self.chat(PLAIN, port=a.port).status for _ in range(3)], [200, 200, 429])
        self.assertEqual([self.chat(PLAIN, port=b.port).status for _ in range(2)], [200, 200],
                         "the other process has its own count while Redis is down")
        r = self.chat(ALICE, port=a.port)
        self.assertEqual(r.status, 429, "a process carries on from what Redis last said: %r" % r)
        metrics = self.admin("/_sluice/metrics", port=a.port).body.decode()
        self.assertIn("sluice_tenant_counters_fallback_total", metrics)
        self.assertEqual(self.admin("/_sluice/keys", port=a.port).json()["counted"], "process (redis down)")
        self.assertIn("is down: sessions and tenant counters fall back to the in-process store", a.stderr())


if __name__ == "__main__":
    harness.main()
