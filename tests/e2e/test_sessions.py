"""test_sessions — sticky sessions and key pools with the in-process store
(issue 10), through the real binary and the scripted mock upstream.

Every turn of a conversation goes to the same supplier and the same key of
its pool, so the supplier's prompt cache keeps hitting; a new conversation
gets the least recently used key; a 429 cools its key down for everyone and
moves the session to another key; `balance = "sticky"` spreads new sessions
over a route's suppliers and keeps each on its own. The history names the
session (hashed) and the binding (supplier, key index), never a key, and
/_sluice/requests?session= lists one conversation's turns. Two workers
share the store, so the tests run with two."""
import json
import os
import tempfile
import urllib.parse

import harness
from harness import SluiceTestCase

KEYS = ["sk-pool-AAAA-secret", "sk-pool-BBBB-secret"]
OK = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
      "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
      "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
OK_SCENE = {"status": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(OK)}


def turns(first, n):
    """The bodies of an n-turn chat conversation that opens with `first`:
    the same system prompt and first user message, a longer history each turn."""
    msgs = [{"role": "system", "content": "You are a careful pair programmer."},
            {"role": "user", "content": first}]
    out = []
    for i in range(n):
        out.append({"model": "gpt-4.1", "messages": list(msgs)})
        msgs += [{"role": "assistant", "content": "answer %d" % i},
                 {"role": "user", "content": "follow-up %d" % i}]
    return out


def key_of(req):
    auth = harness.header_values(req, "authorization")
    return auth[0][len("Bearer "):] if auth else None


class SessionsTest(SluiceTestCase):
    def start(self, suppliers=None, routes=None, sessions="", workers=2):
        self.db = os.path.join(tempfile.mkdtemp(), "history.db")
        base = "http://%s:%d/v1" % (harness.HOST, self.mock.port)
        suppliers = suppliers or (
            '    pool = { protocol = "openai-chat", base_url = "%s", auth = { type = "bearer", '
            'tokens = { "%s", "%s" } } },\n' % (base, KEYS[0], KEYS[1]))
        routes = routes or '{ chat = { { match = "*", supplier = "pool" } } }'
        extra = ('  retry = { attempts = 3, base = 0.01, max = 1 },\n  history = { path = "%s" },\n%s'
                 % (self.db, sessions))
        cfg = harness.sluice_config(self.mock.port, suppliers_extra=suppliers, routes=routes, extra=extra)
        return self.start_sluice(config_text=cfg, workers=workers)

    def chat(self, body, rid, headers=None):
        h = {"content-type": "application/json", "x-request-id": rid}
        h.update(headers or {})
        r = self.post("/v1/chat/completions", json.dumps(body), h)
        self.assertEqual(r.status, 200, r)
        # The binding is written when the exchange ends, which may be just
        # after the client has its answer; the history record comes after
        # that, so once it is there the next turn sees the binding.
        self.assertTrue(harness.wait_for(lambda: self.has_record(rid)), rid)
        return r

    def has_record(self, rid):
        return harness.request(self.sluice.port, "GET", "/_sluice/requests/" + rid).status == 200

    def record(self, rid):
        r = harness.request(self.sluice.port, "GET", "/_sluice/requests/" + rid)
        self.assertEqual(r.status, 200, r)
        return r.json()

    def metrics(self):
        return harness.request(self.sluice.port, "GET", "/_sluice/metrics").body.decode()

    def test_a_conversation_keeps_its_key_and_the_next_one_gets_the_other(self):
        self.start()
        self.mock.enqueue([dict(OK_SCENE, repeat=10)])
        a, b = turns("fix the parser", 5), turns("write the docs", 5)
        for i in range(5):
            self.chat(a[i], "a-%d" % i)
            self.chat(b[i], "b-%d" % i)
        reqs = self.mock.requests()
        self.assertEqual(len(reqs), 10)
        keys_a = [key_of(r) for r in reqs[0::2]]
        keys_b = [key_of(r) for r in reqs[1::2]]
        self.assertEqual(len(set(keys_a)), 1, keys_a)
        self.assertEqual(len(set(keys_b)), 1, keys_b)
        self.assertEqual(sorted([keys_a[0], keys_b[0]]), sorted(KEYS))

        harness.wait_for(lambda: self.record("b-4") is not None)
        rec = self.record("a-4")
        session = rec["extra"]["session"]
        self.assertRegex(session, "^[0-9a-f]{32}$")
        self.assertEqual(rec["extra"]["binding"],
                         {"supplier": "pool", "key_index": KEYS.index(keys_a[0]) + 1})
        self.assertNotEqual(self.record("b-0")["extra"]["session"], session)
        # one conversation's turns, by its session
        r = harness.request(self.sluice.port, "GET",
                            "/_sluice/requests?session=" + urllib.parse.quote(session))
        listed = r.json()
        self.assertEqual(listed["total"], 5, listed)
        self.assertEqual(sorted(i["id"] for i in listed["items"]), ["a-%d" % i for i in range(5)])
        # no key anywhere the operator looks
        shown = (json.dumps(listed) + self.metrics() + self.sluice.stderr() +
                 harness.request(self.sluice.port, "GET", "/_sluice/config").body.decode())
        for k in KEYS:
            self.assertNotIn(k, shown)
        # the live sessions, most recent first: hashed keys, bindings, turns
        live = harness.request(self.sluice.port, "GET", "/_sluice/sessions").json()
        self.assertEqual(live["store"], "memory")
        by_session = {i["session"]: i for i in live["items"]}
        self.assertEqual(len(by_session), 2, live)
        self.assertEqual(by_session[session]["turns"], 5)
        self.assertEqual((by_session[session]["supplier"], by_session[session]["key_index"]),
                         ("pool", KEYS.index(keys_a[0]) + 1))
        self.assertEqual(live["items"][0]["session"], self.record("b-4")["extra"]["session"])
        for k in KEYS:
            self.assertNotIn(k, json.dumps(live))
        m = self.metrics()
        self.assertIn("sluice_session_sticky_hits_total 8", m)
        self.assertIn("sluice_session_misses_total 2", m)

    def test_a_429_cools_the_key_down_and_moves_the_session(self):
        self.start()
        a, c = turns("refactor the cache", 3), turns("another conversation", 1)
        self.mock.enqueue([OK_SCENE])
        self.chat(a[0], "t0")
        first = key_of(self.mock.requests()[0])
        other = [k for k in KEYS if k != first][0]
        # the bound key is rate limited for a minute: the turn still succeeds, on the other key
        self.mock.enqueue([{"status": 429, "headers": {"content-type": "application/json", "retry-after": "60"},
                            "body": json.dumps({"error": {"message": "rate limited", "type": "rate_limit"}})},
                           OK_SCENE])
        self.chat(a[1], "t1")
        reqs = self.mock.requests()
        self.assertEqual([key_of(r) for r in reqs[1:]], [first, other])
        # the session now lives on the other key, and a new conversation avoids the cooling one
        self.mock.enqueue([dict(OK_SCENE, repeat=2)])
        self.chat(a[2], "t2")
        self.chat(c[0], "c0")
        self.assertEqual([key_of(r) for r in self.mock.requests()[3:]], [other, other])
        harness.wait_for(lambda: self.record("c0") is not None)
        self.assertEqual(self.record("t2")["extra"]["binding"]["key_index"], KEYS.index(other) + 1)
        m = self.metrics()
        self.assertIn('sluice_key_cooldowns_total{key="pool#%d"} 1' % (KEYS.index(first) + 1), m)
        self.assertIn("sluice_session_rebinds_total 1", m)

    def test_a_failed_turn_writes_no_binding(self):
        self.start(workers=1)
        a = turns("flaky", 2)
        err = {"status": 500, "headers": {"content-type": "application/json"},
               "body": json.dumps({"error": {"message": "boom"}})}
        self.mock.enqueue([err, err, err])
        r = self.post("/v1/chat/completions", json.dumps(a[0]), {"content-type": "application/json"})
        self.assertEqual(r.status, 500, r)
        self.mock.enqueue([OK_SCENE])
        self.chat(a[1], "after")
        m = self.metrics()
        self.assertIn("sluice_session_misses_total 2", m)
        self.assertNotIn("sluice_session_sticky_hits_total", m)

    def test_sticky_balance_spreads_sessions_over_suppliers_and_keeps_them(self):
        base = "http://%s:%d/v1" % (harness.HOST, self.mock.port)
        sup = ('    s1 = { protocol = "openai-chat", base_url = "%s", auth = { type = "bearer", token = "sk-s1-secret" } },\n'
               '    s2 = { protocol = "openai-chat", base_url = "%s", auth = { type = "bearer", token = "sk-s2-secret" } },\n'
               % (base, base))
        self.start(suppliers=sup, routes='{ chat = { { match = "*", supplier = { "s1", "s2" }, balance = "sticky" } } }')
        self.mock.enqueue([dict(OK_SCENE, repeat=9)])
        convs = [turns("conversation %d" % n, 3) for n in range(3)]
        for t in range(3):
            for n in range(3):
                self.chat(convs[n][t], "c%d-t%d" % (n, t))
        keys = [key_of(r) for r in self.mock.requests()]
        per_conv = [keys[n::3] for n in range(3)]
        for ks in per_conv:
            self.assertEqual(len(set(ks)), 1, per_conv)
        # the first two new sessions went to different suppliers
        self.assertNotEqual(per_conv[0][0], per_conv[1][0])

    def test_sessions_key_override_and_client_hints(self):
        self.start(workers=1, sessions='  sessions = { ttl = 600, key = function(ctx) return ctx.headers["x-conv"] end },\n')
        self.mock.enqueue([dict(OK_SCENE, repeat=4)])
        # different bodies, one x-conv: one session; the other x-conv: the other key
        self.chat(turns("one", 1)[0], "o1", {"x-conv": "conv-1"})
        self.chat(turns("two", 1)[0], "o2", {"x-conv": "conv-1"})
        self.chat(turns("three", 1)[0], "o3", {"x-conv": "conv-2"})
        self.chat(turns("four", 1)[0], "o4", {"x-conv": "conv-1"})
        keys = [key_of(r) for r in self.mock.requests()]
        self.assertEqual(keys[0], keys[1])
        self.assertEqual(keys[0], keys[3])
        self.assertNotEqual(keys[0], keys[2])

    def test_sessions_are_scoped_by_gateway_key(self):
        gw = ["gw-key-tenant-one", "gw-key-tenant-two"]
        # the standard config has a passthrough supplier, which `keys` forbids
        cfg = """
return {
  listen = { "127.0.0.1:@PORT@" }, workers = 1, log = { access = "@ACCESS_LOG@" },
  keys = { "%s", "%s" },
  history = { path = "%s" },
  suppliers = { pool = { protocol = "openai-chat", base_url = "http://%s:%d/v1",
                         auth = { type = "bearer", tokens = { "%s", "%s" } } } },
  routes = { chat = { { match = "*", supplier = "pool" } } },
}""" % (gw[0], gw[1], os.path.join(tempfile.mkdtemp(), "history.db"), harness.HOST, self.mock.port,
        KEYS[0], KEYS[1])
        self.start_sluice(config_text=cfg)
        self.mock.enqueue([dict(OK_SCENE, repeat=3)])
        body = dict(turns("same words", 1)[0], user="the-same-user-id")
        self.chat(body, "g1", {"authorization": "Bearer " + gw[0]})
        self.chat(body, "g2", {"authorization": "Bearer " + gw[1]})
        self.chat(body, "g3", {"authorization": "Bearer " + gw[0]})
        harness.wait_for(lambda: self.record("g3") is not None)
        s1, s2, s3 = (self.record(r)["extra"]["session"] for r in ("g1", "g2", "g3"))
        self.assertEqual(s1, s3)
        self.assertNotEqual(s1, s2)

    def test_prompt_cache_key_carries_the_session_to_openai(self):
        base = "http://%s:%d/v1" % (harness.HOST, self.mock.port)
        sup = ('    pool = { protocol = "openai-chat", base_url = "%s", cache_key = true, auth = { type = "bearer", tokens = { "%s", "%s" } } },\n'
               '    plain = { protocol = "openai-chat", base_url = "%s", auth = { type = "bearer", token = "sk-plain-secret" } },\n'
               % (base, KEYS[0], KEYS[1], base))
        routes = ('{ chat = { { match = "plain-*", supplier = "plain" }, { match = "*", supplier = "pool" } },\n'
                  '    claude = { { match = "*", supplier = "pool" } } }')
        self.start(suppliers=sup, routes=routes, workers=1)
        self.mock.enqueue([dict(OK_SCENE, repeat=4)])
        a = turns("cache me", 1)[0]
        self.chat(a, "p1")
        self.chat(dict(a, prompt_cache_key="client-chosen"), "p2")
        self.chat(dict(a, model="plain-1"), "p3")
        r = self.post("/v1/messages", json.dumps({"model": "claude-x", "max_tokens": 8, "system": "be brief",
                                                  "messages": [{"role": "user", "content": "hello"}]}),
                      {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-request-id": "p4"})
        self.assertEqual(r.status, 200, r)
        bodies = [json.loads(q["body"]) for q in self.mock.requests()]
        harness.wait_for(lambda: self.record("p4") is not None)
        self.assertEqual(bodies[0]["prompt_cache_key"], self.record("p1")["extra"]["session"])
        self.assertEqual(bodies[1]["prompt_cache_key"], "client-chosen")
        self.assertNotIn("prompt_cache_key", bodies[2])  # not an OpenAI host, not opted in
        self.assertEqual(bodies[3]["prompt_cache_key"], self.record("p4")["extra"]["session"])  # translated

    def test_an_adapter_gets_its_upstream_session_back_next_turn(self):
        base = "http://%s:%d/v1" % (harness.HOST, self.mock.port)
        sup = ('    acme = { protocol = "openai-chat", base_url = "%s", auth = { type = "bearer", token = "sk-acme-secret" },\n'
               '      adapter = {\n'
               '        session_id = function(ctx, headers, body) return headers["x-acme-session"] end,\n'
               '        request = function(ctx, plan, body)\n'
               '          local up = ctx.session and ctx.session.upstream_session\n'
               '          if up then require("sluice.adapters").set_header(plan.headers, "x-acme-session", up) end\n'
               '        end,\n'
               '      } },\n' % base)
        self.start(suppliers=sup, routes='{ chat = { { match = "*", supplier = "acme" } } }', workers=1)
        a = turns("stateful supplier", 3)
        self.mock.enqueue([dict(OK_SCENE, headers={"content-type": "application/json", "x-acme-session": "S-1"}),
                           dict(OK_SCENE, repeat=2)])
        for i in range(3):
            self.chat(a[i], "u%d" % i)
        sent = [harness.header_values(r, "x-acme-session") for r in self.mock.requests()]
        self.assertEqual(sent, [[], ["S-1"], ["S-1"]])
        harness.wait_for(lambda: self.record("u2") is not None)
        self.assertEqual(self.record("u0")["extra"]["upstream_session"], "S-1")

    def test_token_counting_is_not_a_turn(self):
        self.start(workers=1, routes='{ claude = { { match = "*", supplier = "an" } } }')
        body = {"model": "claude-x", "max_tokens": 8, "system": "be brief",
                "messages": [{"role": "user", "content": "hello"}]}
        h = {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "sk-client"}
        self.mock.enqueue([{"status": 200, "headers": {"content-type": "application/json"},
                            "body": json.dumps({"input_tokens": 12})}])
        r = self.post("/v1/messages/count_tokens", json.dumps(body), h)
        self.assertEqual(r.status, 200, r)
        self.assertNotIn("sluice_session_", self.metrics())
        self.mock.enqueue([{"status": 200, "headers": {"content-type": "application/json"}, "body": json.dumps({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 1}})}])
        r = self.post("/v1/messages", json.dumps(body), h)
        self.assertEqual(r.status, 200, r)
        self.assertIn("sluice_session_misses_total 1", self.metrics())

    def test_a_runaway_sessions_key_fails_the_request_not_the_worker(self):
        self.start(workers=1, sessions='  script_budget = 1000000,\n'
                   '  sessions = { key = function(ctx) if ctx.headers["x-loop"] then while true do end end end },\n')
        r = self.post("/v1/chat/completions", json.dumps(turns("loop", 1)[0]),
                      {"content-type": "application/json", "x-loop": "1"})
        self.assertEqual(r.status, 500, r)
        self.assertIn("error", r.json())
        self.mock.enqueue([OK_SCENE])
        self.chat(turns("fine", 1)[0], "after-loop")

    def test_bad_sessions_config_fails_check_naming_the_field(self):
        for text, field in [('sessions = { store = "mongo" }', "sessions.store"),
                            ('sessions = { ttl = -1 }', "sessions.ttl"),
                            ('sessions = { key = "x" }', "sessions.key"),
                            ('sessions = { bogus = 1 }', "sessions.bogus")]:
            cfg = harness.sluice_config(self.mock.port, extra="  %s,\n" % text)
            rc, out = harness.run_check(cfg)
            self.assertNotEqual(rc, 0, out)
            self.assertIn(field, out)
        base = "http://%s:%d/v1" % (harness.HOST, self.mock.port)
        cfg = harness.sluice_config(self.mock.port, suppliers_extra=(
            '    p = { protocol = "openai-chat", base_url = "%s", auth = { type = "bearer", tokens = { "a", 7 } } },\n' % base))
        rc, out = harness.run_check(cfg)
        self.assertNotEqual(rc, 0, out)
        self.assertIn("suppliers.p.auth.tokens[2]", out)


if __name__ == "__main__":
    harness.main()
