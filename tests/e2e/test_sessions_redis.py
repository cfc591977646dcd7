"""test_sessions_redis — sessions on a real redis-server (issue 10).

With `sessions.store = "redis"` the session entries, key cool-downs and
use stamps live in Redis: a conversation sticks to its key turn after turn
and across sluice instances sharing the Redis; a 429 cools a key down for
every instance; when Redis dies requests keep flowing on the in-process
store (counted, logged, shown in /_sluice/health) and when it comes back it
is used again; an entry of an unknown schema version is rewritten. Every
test starts its own redis-server on a free loopback port."""
import json
import os
import signal
import subprocess
import tempfile
import threading
import time

import harness
from harness import SluiceTestCase
from test_sessions import KEYS, OK_SCENE, turns, key_of


def restart_redis(redis):
    """Start redis-server again on the port the old one had."""
    redis.proc = subprocess.Popen(
        ["redis-server", "--port", str(redis.port), "--bind", harness.HOST, "--save", "",
         "--appendonly", "no", "--dir", redis.dir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness._live.append(redis)
    assert harness.wait_for(lambda: redis.command("PING") == b"+PONG\r\n")


class RedisSessionsTest(SluiceTestCase):
    def config(self, redis_port, timeout="0.5"):
        db = os.path.join(tempfile.mkdtemp(), "history.db")
        base = "http://%s:%d/v1" % (harness.HOST, self.mock.port)
        suppliers = ('    pool = { protocol = "openai-chat", base_url = "%s", auth = { type = "bearer", '
                     'tokens = { "%s", "%s" } } },\n' % (base, KEYS[0], KEYS[1]))
        extra = ('  retry = { attempts = 3, base = 0.01, max = 1 },\n  history = { path = "%s" },\n'
                 '  sessions = { store = "redis", ttl = 600, redis = { url = "redis://127.0.0.1:%d/0", timeout = %s } },\n'
                 % (db, redis_port, timeout))
        return harness.sluice_config(self.mock.port, suppliers_extra=suppliers,
                                     routes='{ chat = { { match = "*", supplier = "pool" } } }', extra=extra)

    def start_on(self, redis, workers=2):
        s = self.start_sluice(config_text=self.config(redis.port), workers=workers)
        self.wait_redis(s, "up")
        return s

    def wait_redis(self, s, state):
        def ok():
            h = harness.request(s.port, "GET", "/_sluice/health").json()
            want = h["workers"] if state == "up" else 0
            return h.get("redis") == state and h.get("redis_connections") == want
        self.assertTrue(harness.wait_for(ok, timeout=15), harness.request(s.port, "GET", "/_sluice/health"))

    def chat(self, body, rid="", port=None):
        h = {"content-type": "application/json"}
        if rid:
            h["x-request-id"] = rid
        r = self.post("/v1/chat/completions", json.dumps(body), h, port=port)
        self.assertEqual(r.status, 200, r)
        if rid:  # the binding is written as the exchange ends: wait for its record (after it)
            self.assertTrue(harness.wait_for(lambda: harness.request(
                port or self.sluice.port, "GET", "/_sluice/requests/" + rid).status == 200), rid)
        return r

    def session_of(self, rid, port=None):
        def rec():
            r = harness.request(port or self.sluice.port, "GET", "/_sluice/requests/" + rid)
            return r.json() if r.status == 200 else None
        harness.wait_for(lambda: rec() is not None)
        return rec()["extra"]["session"]

    def metrics(self, port=None):
        return harness.request(port or self.sluice.port, "GET", "/_sluice/metrics").body.decode()

    def test_sessions_live_in_redis_and_stick(self):
        redis = self.start_redis()
        self.start_on(redis)
        self.mock.enqueue([dict(OK_SCENE, repeat=10)])
        a, b = turns("fix the parser", 5), turns("write the docs", 5)
        for i in range(5):
            self.chat(a[i], "a-%d" % i)
            self.chat(b[i], "b-%d" % i)
        keys = [key_of(r) for r in self.mock.requests()]
        self.assertEqual(len(set(keys[0::2])), 1, keys)
        self.assertEqual(len(set(keys[1::2])), 1, keys)
        self.assertNotEqual(keys[0], keys[1])
        entry = json.loads(redis.get("sluice:sess:" + self.session_of("a-4")))
        self.assertEqual((entry["v"], entry["supplier"], entry["turns"]), (1, "pool", 5))
        self.assertEqual(entry["key_index"], KEYS.index(keys[0]) + 1)
        # nothing in Redis names a key or the client's conversation
        dump = "".join(k + (redis.get(k) or "") for k in redis.keys())
        for k in KEYS:
            self.assertNotIn(k, dump)
        self.assertNotIn("fix the parser", dump)
        live = harness.request(self.sluice.port, "GET", "/_sluice/sessions").json()
        self.assertEqual(live["store"], "redis")
        self.assertIn(self.session_of("a-4"), [i["session"] for i in live["items"]])
        self.assertNotIn("sluice_session_store_fallback_total", self.metrics())
        # one round trip per request: each of the 10 waited on Redis once, for
        # one MGET pipelined with the PEXPIRE that keeps the session alive
        self.assertIn("sluice_redis_round_trips_total 10\n", self.metrics())
        stats = redis.command("INFO", "commandstats").decode()
        self.assertRegex(stats, r"cmdstat_mget:calls=10,")
        self.assertRegex(stats, r"cmdstat_pexpire:calls=10,")

    def test_a_429_cools_the_key_down_in_redis(self):
        redis = self.start_redis()
        self.start_on(redis, workers=1)
        a = turns("rate limited", 2)
        self.mock.enqueue([OK_SCENE])
        self.chat(a[0], "r0")
        first = key_of(self.mock.requests()[0])
        other = [k for k in KEYS if k != first][0]
        self.mock.enqueue([{"status": 429, "headers": {"content-type": "application/json", "retry-after": "60"},
                            "body": json.dumps({"error": {"message": "slow down"}})}, OK_SCENE])
        self.chat(a[1], "r1")
        self.assertEqual([key_of(r) for r in self.mock.requests()[1:]], [first, other])
        cool = "sluice:key:pool:%d:cool" % (KEYS.index(first) + 1)
        self.assertTrue(harness.wait_for(lambda: redis.get(cool) is not None))
        ttl = int(redis.command("TTL", cool)[1:].split(b"\r\n")[0])
        self.assertTrue(0 < ttl <= 60, ttl)
        entry = json.loads(redis.get("sluice:sess:" + self.session_of("r1")))
        self.assertEqual(entry["key_index"], KEYS.index(other) + 1)

    def test_redis_down_falls_back_and_comes_back(self):
        redis = self.start_redis()
        s = self.start_on(redis, workers=1)
        a = turns("survive an outage", 6)
        self.mock.enqueue([dict(OK_SCENE, repeat=6)])
        self.chat(a[0], "o0")
        harness.end_process(redis.proc, 5)
        # no request fails while Redis is gone
        self.chat(a[1], "o1")
        self.chat(a[2], "o2")
        self.wait_redis(s, "down")
        self.assertIn("sluice_session_store_fallback_total", self.metrics())
        self.assertIn("sluice_redis_connections 0", self.metrics())
        # the outage and the return are logged once each
        restart_redis(redis)
        self.wait_redis(s, "up")
        self.chat(a[3], "o3")
        hash_ = self.session_of("o3")
        self.assertTrue(harness.wait_for(lambda: redis.get("sluice:sess:" + hash_) is not None))
        err = s.stderr()
        self.assertEqual(err.count("is down: sessions and tenant counters fall back"), 1, err)
        self.assertEqual(err.count("is up: sessions and tenant counters use it"), 2, err)  # at start, and back

    def test_a_redis_slower_than_the_timeout_is_not_waited_for(self):
        redis = self.start_redis()
        s = self.start_sluice(config_text=self.config(redis.port, timeout="0.3"), workers=1)
        self.wait_redis(s, "up")
        a = turns("frozen redis", 3)
        self.mock.enqueue([dict(OK_SCENE, repeat=3)])
        self.chat(a[0], "f0")
        redis.proc.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing
        try:
            self.chat(a[1], "f1")  # waits at most the timeout, then the in-process store
            self.assertIn("sluice_session_store_fallback_total 1", self.metrics())
            self.wait_redis(s, "down")
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        self.wait_redis(s, "up")
        self.chat(a[2], "f2")
        self.assertIn("sluice_session_store_fallback_total 1", self.metrics())

    def test_an_entry_of_an_unknown_schema_is_rewritten(self):
        redis = self.start_redis()
        self.start_on(redis, workers=1)
        a = turns("old entry", 2)
        self.mock.enqueue([dict(OK_SCENE, repeat=2)])
        self.chat(a[0], "s0")
        name = "sluice:sess:" + self.session_of("s0")
        redis.command("SET", name, json.dumps({"v": 99, "supplier": "gone", "key_index": 7}))
        self.chat(a[1], "s1")
        self.assertTrue(harness.wait_for(lambda: json.loads(redis.get(name))["v"] == 1))
        entry = json.loads(redis.get(name))
        self.assertEqual((entry["supplier"], entry["turns"]), ("pool", 1))

    def test_two_instances_continue_one_session_and_share_cooldowns(self):
        redis = self.start_redis()
        one = self.start_on(redis, workers=1)
        two = harness.start_sluice(self.config(redis.port), workers=1)
        self.addCleanup(self._stop_and_check, two)
        self.wait_redis(two, "up")
        a, c = turns("shared conversation", 4), turns("another", 1)
        self.mock.enqueue([dict(OK_SCENE, repeat=4)])
        for i in range(4):
            s = one if i % 2 == 0 else two
            self.chat(a[i], "x%d" % i, port=s.port)
            name = "sluice:sess:" + self.session_of("x%d" % i, port=s.port)
            # the other instance reads Redis: wait until this turn's write is there
            self.assertTrue(harness.wait_for(
                lambda: json.loads(redis.get(name) or "{}").get("turns") == i + 1))
        keys = [key_of(r) for r in self.mock.requests()]
        self.assertEqual(len(set(keys)), 1, keys)
        # a 429 seen by one instance cools the key for the other
        self.mock.enqueue([{"status": 429, "headers": {"content-type": "application/json"},
                            "body": json.dumps({"error": {"message": "slow down"}})}, dict(OK_SCENE, repeat=2)])
        self.chat(dict(a[3], messages=a[3]["messages"] + [{"role": "user", "content": "more"}]), "x4", port=one.port)
        self.chat(c[0], "c0", port=two.port)
        later = [key_of(r) for r in self.mock.requests()[4:]]
        self.assertEqual(later[0], keys[0])
        self.assertNotEqual(later[1], keys[0])
        self.assertEqual(later[2], later[1])

    def test_two_instances_fetch_one_managed_token_between_them(self):
        redis = self.start_redis()
        base = "http://%s:%d" % (harness.HOST, self.mock.port)
        sup = ('    acme = { protocol = "openai-chat", base_url = "%s/v1", auth = { type = "managed", '
               'token_url = "%s/oauth/token", client_id = "sluice-test", client_secret = "cs-shared-SECRET" } },\n'
               % (base, base))
        extra = ('  retry = { attempts = 1 },\n'
                 '  sessions = { store = "redis", redis = { url = "redis://127.0.0.1:%d/0", timeout = 0.5 } },\n'
                 % redis.port)
        cfg = harness.sluice_config(self.mock.port, suppliers_extra=sup, extra=extra,
                                    routes='{ chat = { { match = "*", supplier = "acme" } } }')
        one = self.start_sluice(config_text=cfg, workers=1)
        two = harness.start_sluice(cfg, workers=1)
        self.addCleanup(self._stop_and_check, two)
        self.wait_redis(one, "up")
        self.wait_redis(two, "up")
        token = {"path": "/oauth/token", "delay_ms": 500, "repeat": 4,
                 "body": json.dumps({"access_token": "tok-shared-1", "expires_in": 3600})}
        self.mock.enqueue([token, dict(OK_SCENE, path="/v1/chat", repeat=6)])
        results = []

        def one_request(port, i):
            results.append(self.post("/v1/chat/completions", json.dumps(turns("t%d" % i, 1)[0]),
                                     {"content-type": "application/json"}, port=port).status)
        # both instances need the token at the same moment: one fetch between them
        threads = [threading.Thread(target=one_request, args=(s.port, i))
                   for i, s in enumerate([one, two, one, two])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, [200] * 4)
        # and later requests on either instance reuse it
        for i, s in enumerate([one, two]):
            one_request(s.port, 10 + i)
        reqs = self.mock.requests()
        fetches = [r for r in reqs if r["path"].startswith("/oauth/token")]
        self.assertEqual(len(fetches), 1, [r["path"] for r in reqs])
        for r in reqs:
            if r["path"].startswith("/v1/chat"):
                self.assertEqual(harness.header_values(r, "authorization"), ["Bearer tok-shared-1"])

    def test_a_reload_moves_sessions_between_stores(self):
        redis = self.start_redis()
        s = self.start_on(redis, workers=2)
        memory_cfg = self.config(redis.port).replace('store = "redis"', 'store = "memory"')
        memory_cfg = memory_cfg.replace(', redis = { url = "redis://127.0.0.1:%d/0", timeout = 0.5 }' % redis.port, "")
        s.write_config(memory_cfg)
        s.reload()
        self.assertTrue(harness.wait_for(
            lambda: "redis" not in harness.request(s.port, "GET", "/_sluice/health").json()))
        self.mock.enqueue([dict(OK_SCENE, repeat=2)])
        self.chat(turns("after reload", 1)[0], "m0")
        self.assertEqual(redis.keys(), [])  # nothing goes to Redis any more
        s.write_config(self.config(redis.port))
        s.reload()
        self.wait_redis(s, "up")
        self.chat(turns("back on redis", 1)[0], "m1")
        name = "sluice:sess:" + self.session_of("m1")
        self.assertTrue(harness.wait_for(lambda: redis.get(name) is not None))

    def test_scripts_reach_redis_through_sluice_redis(self):
        redis = self.start_redis()
        hook = ('function(ctx)\n'
                '    local redis = require("sluice").redis\n'
                '    local n = redis.command("INCR", "script:hits")\n'
                '    local r = redis.pipeline({ { "SET", "script:last", ctx.model }, { "GET", "script:last" } })\n'
                '    redis.send({ { "SET", "script:seen", tostring(n) .. ":" .. r[2] } })\n'
                '  end')
        cfg = self.config(redis.port).replace("  routes =", "  on_request = %s,\n  routes =" % hook, 1)
        s = self.start_sluice(config_text=cfg, workers=1)
        self.wait_redis(s, "up")
        self.mock.enqueue([dict(OK_SCENE, repeat=2)])
        self.chat(turns("one", 1)[0], "h1")
        self.chat(turns("two", 1)[0], "h2")
        self.assertTrue(harness.wait_for(lambda: redis.get("script:seen") == "2:gpt-4.1"))

    def test_bad_redis_url_fails_check_naming_the_field(self):
        for url in ["http://127.0.0.1:6379", "redis://", "redis://host:99999"]:
            cfg = harness.sluice_config(self.mock.port, extra='  sessions = { store = "redis", redis = { url = "%s" } },\n' % url)
            rc, out = harness.run_check(cfg)
            self.assertNotEqual(rc, 0, out)
            self.assertIn("sessions.redis.url", out)


if __name__ == "__main__":
    harness.main()
