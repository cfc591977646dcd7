"""test_usage_cost — prices, each record's cost and GET /_sluice/usage (issue 14).

The config's `prices` table (USD per million tokens, a glob on the model
asked of the supplier, a supplier's own table first) gives every history
record a `cost`, null when no price matches. /_sluice/usage adds the
records up over a time range, grouped by key, model, supplier, client,
service, day or hour: requests, errors, partials, tokens, the cache-hit
ratio (cache reads / all input), cost and the TTFB percentiles. A bad price
table fails `--check` naming the field; an unknown group is a 400 naming
the known ones.
"""

import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

KEYS = ("gw-key-one-1111", "gw-key-two-2222")

PRICES = """  prices = {
    ["gpt-4*"] = { input = 2.00, output = 8.00, cache_read = 0.50 },
    ["gpt-4.1-mini"] = { input = 0.40, output = 1.60 },
    ["claude-sonnet-4*"] = { input = 3.00, output = 15.00, cache_read = 0.30, cache_write = 3.75 },
  },
"""


def chat_json(model, prompt, completion, cached=0):
    return json.dumps({
        "id": "chatcmpl-u", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": cached}}})


def anthropic_json(inp, out, cache_read, cache_write):
    return json.dumps({
        "id": "msg_u", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": cache_read,
                  "cache_creation_input_tokens": cache_write}})


def scene(body, status=200):
    return {"status": status, "headers": {"Content-Type": "application/json"}, "body": body}


def usage_config(mock_port, history, keys=True, cheap_prices=False):
    """Two suppliers on the mock (no passthrough auth: `keys` forbids it);
    `cheap` has its own price table when cheap_prices."""
    base = "http://127.0.0.1:%d" % mock_port
    cheap = ', prices = { ["gpt-4*"] = { input = 1, output = 1 } }' if cheap_prices else ""
    return """
return {
  listen = { "127.0.0.1:@PORT@" },
  log = { access = "@ACCESS_LOG@" },
  retry = { attempts = 1 },
  history = { path = "%(history)s" },
%(prices)s%(keys)s  suppliers = {
    oa = { protocol = "openai-chat", base_url = "%(base)s/v1", auth = { type = "bearer", token = "sk-up-oa-1" } },
    cheap = { protocol = "openai-chat", base_url = "%(base)s/v1", auth = { type = "bearer", token = "sk-up-ch-1" }%(cheap)s },
    an = { protocol = "anthropic", base_url = "%(base)s", auth = { type = "header", name = "x-api-key", value = "sk-up-an-1" } },
  },
  routes = {
    chat = { { match = "cheap-*", supplier = "cheap", model = "gpt-4.1" }, { match = "*", supplier = "oa" } },
    claude = { { match = "*", supplier = "an" } },
  },
}
""" % {"history": history, "prices": PRICES, "base": base, "cheap": cheap,
       "keys": ("  keys = { %s },\n" % ", ".join(harness.lua_str(k) for k in KEYS)) if keys else ""}


class UsageCase(harness.SluiceTestCase):
    def start(self, keys=True, cheap_prices=False):
        d = tempfile.mkdtemp(prefix="sluice-usage-")
        self.addCleanup(shutil.rmtree, d, True)
        return self.start_sluice(usage_config(self.mock.port, d + "/history.db", keys, cheap_prices))

    def chat(self, model, key=KEYS[0], ua="agent-a/1.0"):
        r = self.post("/v1/chat/completions",
                      {"model": model, "messages": [{"role": "user", "content": "hi"}]},
                      headers={"Authorization": "Bearer " + key, "User-Agent": ua})
        return r

    def claude(self, key=KEYS[0]):
        return self.post("/v1/messages",
                         {"model": "claude-sonnet-4-5", "max_tokens": 10,
                          "messages": [{"role": "user", "content": "hi"}]},
                         headers={"x-api-key": key, "anthropic-version": "2023-06-01"})

    def admin_json(self, path, status=200):
        r = harness.request(self.sluice.port, "GET", path)
        self.assertEqual(r.status, status, "%s: %r%s" % (path, r.body[:300], self.diag()))
        return r.json()


class CostTest(UsageCase):
    def test_each_record_is_priced_from_its_usage(self):
        self.start()
        self.mock.enqueue([
            scene(chat_json("gpt-4.1", 1000, 200, cached=400)),
            scene(chat_json("gpt-4.1-mini", 1000, 1000)),
            scene(chat_json("o3", 10, 10)),
        ])
        for model in ("gpt-4.1", "gpt-4.1-mini", "o3"):
            self.assertEqual(self.chat(model).status, 200, self.diag())
        self.mock.enqueue(scene(anthropic_json(100, 50, 1000, 200)))
        self.assertEqual(self.claude().status, 200, self.diag())

        items = {it["model_out"]: it for it in self.admin_json("/_sluice/requests")["items"]}
        # gpt-4.1: 600 plain input at 2.00, 400 cached at 0.50, 200 output at 8.00
        self.assertAlmostEqual(items["gpt-4.1"]["cost"], (600 * 2 + 400 * 0.5 + 200 * 8) / 1e6, 9)
        # the longer, more specific glob wins over gpt-4*
        self.assertAlmostEqual(items["gpt-4.1-mini"]["cost"], (1000 * 0.4 + 1000 * 1.6) / 1e6, 9)
        self.assertIsNone(items["o3"]["cost"], "no price matches o3")
        # anthropic: input 100 plain, 1000 cache reads, 200 cache writes, 50 output
        self.assertAlmostEqual(items["claude-sonnet-4-5"]["cost"],
                               (100 * 3 + 1000 * 0.3 + 200 * 3.75 + 50 * 15) / 1e6, 9)

    def test_a_suppliers_prices_come_first(self):
        self.start(cheap_prices=True)
        self.mock.enqueue([scene(chat_json("gpt-4.1", 1000, 1000)), scene(chat_json("gpt-4.1", 1000, 1000))])
        self.assertEqual(self.chat("cheap-4").status, 200, self.diag())
        self.assertEqual(self.chat("gpt-4.1").status, 200, self.diag())
        items = {it["supplier"]: it for it in self.admin_json("/_sluice/requests")["items"]}
        self.assertAlmostEqual(items["cheap"]["cost"], 2000 / 1e6, 9)  # its own table
        self.assertAlmostEqual(items["oa"]["cost"], (1000 * 2 + 1000 * 8) / 1e6, 9)  # the global one

    def test_a_history_from_before_cost_gains_the_column(self):
        d = tempfile.mkdtemp(prefix="sluice-usage-")
        self.addCleanup(shutil.rmtree, d, True)
        path = d + "/history.db"
        s = self.start_sluice(usage_config(self.mock.port, path))
        s.cleanup()
        db = sqlite3.connect(path)
        # the schema an older sluice made: no cost column, no usage index (it
        # covers cost), a plain index on time
        db.execute("DROP INDEX requests_usage")
        db.execute("CREATE INDEX requests_time ON requests(time)")
        db.execute("ALTER TABLE requests DROP COLUMN cost")
        db.commit()
        db.close()
        self.start_sluice(usage_config(self.mock.port, path))
        self.mock.enqueue(scene(chat_json("gpt-4.1", 1000, 0)))
        self.assertEqual(self.chat("gpt-4.1").status, 200, self.diag())
        it = self.admin_json("/_sluice/requests")["items"][0]
        self.assertAlmostEqual(it["cost"], 2000 / 1e6, 9)
        self.assertAlmostEqual(self.admin_json("/_sluice/usage")["rows"][0]["cost"], 2000 / 1e6, 9)
        db = sqlite3.connect(path)
        indexes = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'"))
        db.close()
        self.assertEqual(indexes, ["requests_id", "requests_usage"])

    def test_bad_price_tables_fail_check_naming_the_field(self):
        cases = [
            ('prices = { ["gpt-4*"] = { input = "two", output = 8 } },', 'prices["gpt-4*"].input'),
            ('prices = { ["gpt-4*"] = { input = 2, outptu = 8 } },', 'prices["gpt-4*"].outptu'),
            ('prices = { ["gpt-4*"] = { input = 2 } },', 'prices["gpt-4*"].output'),
            ('prices = { ["gpt-4*"] = { input = -1, output = 8 } },', 'prices["gpt-4*"].input'),
            ('prices = "cheap",', "prices"),
        ]
        for text, field in cases:
            code, out = harness.run_check(harness.sluice_config(self.mock.port, extra="  " + text + "\n"))
            self.assertNotEqual(code, 0, text)
            self.assertIn(field, out, "%s: %s" % (text, out))
        code, out = harness.run_check(harness.sluice_config(
            self.mock.port, suppliers_extra='    z = { protocol = "openai-chat", base_url = "http://x", '
                                            'prices = { m = { input = 1, output = "x" } } },\n'))
        self.assertNotEqual(code, 0)
        self.assertIn('suppliers.z.prices["m"].output', out)


class UsageTest(UsageCase):
    def test_totals_and_groups_equal_the_sum_of_the_records(self):
        self.start()
        self.mock.enqueue([
            scene(chat_json("gpt-4.1", 1000, 100, cached=500)),
            scene(chat_json("gpt-4.1", 3000, 300, cached=0)),
            scene(chat_json("gpt-4.1-mini", 200, 20)),
            scene(json.dumps({"error": {"message": "overloaded", "type": "server_error"}}), status=503),
        ])
        self.assertEqual(self.chat("gpt-4.1", key=KEYS[0], ua="agent-a/1").status, 200)
        self.assertEqual(self.chat("gpt-4.1", key=KEYS[1], ua="agent-b/1").status, 200)
        self.assertEqual(self.chat("gpt-4.1-mini", key=KEYS[1], ua="agent-b/1").status, 200)
        self.assertEqual(self.chat("gpt-4.1", key=KEYS[0], ua="agent-a/1").status, 503)

        records = self.admin_json("/_sluice/requests?limit=100")["items"]
        self.assertEqual(len(records), 4)
        self.assertEqual(sorted(r["key"] for r in records), ["key#1", "key#1", "key#2", "key#2"])
        total = self.admin_json("/_sluice/usage")
        self.assertEqual(len(total["rows"]), 1)
        row = total["rows"][0]
        self.assertEqual(row["requests"], 4)
        self.assertEqual(row["errors"], 1)
        self.assertEqual(row["partials"], 0)
        inputs = sum(r["usage"]["input_tokens"] or 0 for r in records)
        self.assertEqual(row["input_tokens"], inputs)
        self.assertEqual(row["output_tokens"], sum(r["usage"]["output_tokens"] or 0 for r in records))
        self.assertEqual(row["cache_read_tokens"], 500)
        self.assertAlmostEqual(row["cache_hit_ratio"], 500 / inputs, 4)
        self.assertAlmostEqual(row["cost"], sum(r["cost"] or 0 for r in records), 6)
        ttfbs = sorted(r["ttfb_ms"] for r in records if r["ttfb_ms"] is not None)
        self.assertAlmostEqual(row["ttfb_p50_ms"], ttfbs[1], 2)  # nearest rank: ceil(0.5*4) = 2nd
        self.assertAlmostEqual(row["ttfb_p95_ms"], ttfbs[3], 2)

        by_key = {r["key"]: r for r in self.admin_json("/_sluice/usage?group_by=key")["rows"]}
        self.assertEqual(set(by_key), {"key#1", "key#2"})
        self.assertEqual((by_key["key#1"]["requests"], by_key["key#1"]["errors"]), (2, 1))
        self.assertEqual(by_key["key#2"]["requests"], 2)
        for k in KEYS:  # the key's text never appears, only its place in `keys`
            self.assertNotIn(k, json.dumps(by_key))

        rows = self.admin_json("/_sluice/usage?group_by=model,client")["rows"]
        got = {(r["model"], r["client"]): r["requests"] for r in rows}
        self.assertEqual(sum(got.values()), 4)
        self.assertEqual(got[("gpt-4.1-mini", "agent-b")], 1)
        day = self.admin_json("/_sluice/usage?group_by=day")["rows"]
        self.assertEqual(day[0]["day"], time.strftime("%Y-%m-%d", time.gmtime(records[0]["time"])))

        # the range: nothing before the first record, nothing from a time after the last
        first = min(r["time"] for r in records)
        self.assertEqual(self.admin_json("/_sluice/usage?until=%f" % (first - 1))["rows"], [])
        self.assertEqual(self.admin_json("/_sluice/usage?since=%f" % (time.time() + 60))["rows"], [])

    def test_bad_parameters_are_a_400_saying_what_is_wrong(self):
        self.start(keys=False)
        r = harness.request(self.sluice.port, "GET", "/_sluice/usage?group_by=model,colour")
        self.assertEqual(r.status, 400)
        msg = r.json()["error"]["message"]
        self.assertIn("colour", msg)
        self.assertIn("supplier", msg)
        for bad in ("since=yesterday", "since=nan", "until=inf", "since=-5"):
            r = harness.request(self.sluice.port, "GET", "/_sluice/usage?" + bad)
            self.assertEqual(r.status, 400, bad)
            self.assertIn(bad.split("=")[0] + ": expected unix seconds", r.json()["error"]["message"])
        r = harness.request(self.sluice.port, "GET", "/_sluice/usage?group_by=key,model,client,day,hour")
        self.assertEqual(r.status, 400)
        self.assertIn("at most 4", r.json()["error"]["message"])


if __name__ == "__main__":
    harness.main()
