"""test_history — the request history and the admin API, through the real binary (issue 3).

Every proxied request must leave exactly one record in the SQLite history,
readable at /_sluice/requests: none lost when 200 streams run at once on two
workers; the oldest evicted so that `history.max` rows remain; filters
(client from the User-Agent, status and status class, search, since,
limit/offset) return what they say; a record is fetched by the request's
x-request-id and deleted by it, unknown ids are 404; bodies are kept only
when `history.bodies = true`; no secret (the supplier's token, the client's
key, a ?key= in the query) ever appears in a record or a listing. And the
admin API, once `admin.token` is set, answers 401 without the right
`Authorization: Bearer` token and 200 with it.

Each test has its own history file in a temp dir; retries are off
(`retry.attempts = 1`) so one client request is one upstream request.
"""

import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CLIENT_KEY = "sk-client-history-key-90417"
GOOGLE_KEY = "AIza-client-query-key-55102"
SUPPLIER_SECRETS = ("sk-upstream-secret-oa", "sk-upstream-secret-rs", "sk-upstream-secret-xo")
ADMIN_TOKEN = "t0ken-abcdefgh"

CHAT_JSON = json.dumps({
    "id": "chatcmpl-h", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "answer-text-7781"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}})
ANTHROPIC_JSON = json.dumps({
    "id": "msg_h", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 1}})
RESPONSES_JSON = json.dumps({
    "id": "resp_h", "object": "response", "status": "completed", "model": "gpt-5-codex",
    "output": [{"type": "message", "id": "m", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "ok", "annotations": []}]}],
    "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}})
GEMINI_JSON = json.dumps({
    "candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP",
                    "index": 0}],
    "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 1, "totalTokenCount": 3}})

CHAT_STREAM = "".join(
    "data: %s\n\n" % json.dumps({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
                                 "model": "gpt-4.1",
                                 "choices": [{"index": 0, "delta": d, "finish_reason": f}]})
    for d, f in (({"role": "assistant", "content": ""}, None), ({"content": "Hi"}, None),
                 ({"content": " there"}, None), ({}, "stop"))) + "data: [DONE]\n\n"


def chat_body(model="gpt-4.1", stream=False, text="hello"):
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}


def json_scene(body, status=200, repeat=1):
    return {"status": status, "headers": {"Content-Type": "application/json"}, "body": body,
            "repeat": repeat}


def admin(port, method, path, token=None):
    headers = {"Authorization": "Bearer " + token} if token else None
    return harness.request(port, method, path, headers=headers)


class HistoryCase(harness.SluiceTestCase):
    def start(self, workers=1, max_records=None, bodies=False, extra="", routes=None):
        d = tempfile.mkdtemp(prefix="sluice-hist-")
        self.addCleanup(shutil.rmtree, d, True)
        hist = 'path = "%s/history.db", bodies = %s' % (d, "true" if bodies else "false")
        if max_records:
            hist += ", max = %d" % max_records
        extra = "  retry = { attempts = 1 },\n  history = { %s },\n%s" % (hist, extra)
        return self.start_sluice(workers=workers, extra=extra, routes=routes)

    def chat(self, rid=None, headers=None, **kw):
        h = dict(headers or {})
        if rid:
            h["x-request-id"] = rid
        return self.post("/v1/chat/completions", chat_body(**kw), headers=h)

    def listing(self, query=""):
        r = admin(self.sluice.port, "GET", "/_sluice/requests" + query)
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        return r.json()

    def ids(self, query=""):
        return [it["id"] for it in self.listing(query)["items"]]


class ConcurrencyTest(HistoryCase):
    def test_200_concurrent_streams_leave_200_records(self):
        self.start(workers=2)
        n = 200
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"}, "repeat": n,
                           "chunks": [{"data": part + "\n\n", "delay_ms": 20}
                                      for part in CHAT_STREAM.split("\n\n") if part]})

        def one(i):
            r = self.chat("conc-%03d" % i, stream=True)
            return i, r.status, r.body

        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(one, range(n)))
        for i, status, body in results:
            self.assertEqual(status, 200, "request %d: %r%s" % (i, body[:200], self.diag()))
            self.assertEqual(body, CHAT_STREAM.encode(), "request %d got a different stream" % i)
        self.assertEqual(len(self.mock.requests()), n)

        listing = self.listing("?limit=1000")
        self.assertEqual(listing["total"], n, "records lost or duplicated")
        got = sorted(it["id"] for it in listing["items"])
        self.assertEqual(got, ["conc-%03d" % i for i in range(n)])
        for it in listing["items"]:
            self.assertEqual((it["reason"], it["partial"], it["status"]), ("COMPLETE", False, 200), it)
        # Nothing in flight any more.
        metrics = admin(self.sluice.port, "GET", "/_sluice/metrics").body.decode()
        self.assertIn("\nsluice_active_streams 0\n", "\n" + metrics)


class EvictionTest(HistoryCase):
    def test_max_keeps_exactly_the_newest(self):
        self.start(max_records=50)
        self.mock.enqueue(json_scene(CHAT_JSON, repeat=80))
        for i in range(80):
            r = self.chat("ev-%02d" % i)
            self.assertEqual(r.status, 200, r)
        listing = self.listing("?limit=1000")
        self.assertEqual(listing["total"], 50)
        self.assertEqual(len(listing["items"]), 50)
        self.assertEqual(sorted(it["id"] for it in listing["items"]), ["ev-%02d" % i for i in range(30, 80)])
        self.assertEqual(admin(self.sluice.port, "GET", "/_sluice/requests/ev-00").status, 404)
        self.assertEqual(admin(self.sluice.port, "GET", "/_sluice/requests/ev-79").status, 200)


class FilterTest(HistoryCase):
    def setUp(self):
        super().setUp()
        self.start()

    def send_mix(self):
        """7 requests of known client, status and model; returns the time between the two halves."""
        claude = {"anthropic-version": "2023-06-01", "x-api-key": CLIENT_KEY, "User-Agent": "claude-cli/1.0.83 (external, cli)"}
        self.mock.enqueue(json_scene(ANTHROPIC_JSON, repeat=3))
        for i in range(3):
            r = self.post("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 16,
                                           "messages": [{"role": "user", "content": "x"}]},
                          headers=dict(claude, **{"x-request-id": "f-claude-%d" % i}))
            self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        time.sleep(0.05)
        middle = time.time()
        time.sleep(0.05)
        self.mock.enqueue(json_scene(RESPONSES_JSON, repeat=2))
        for i in range(2):
            r = self.post("/v1/responses", {"model": "gpt-5-codex", "input": "x"},
                          headers={"User-Agent": "codex_cli_rs/0.46.0", "x-request-id": "f-codex-%d" % i})
            self.assertEqual(r.status, 200, r)
        self.mock.enqueue(json_scene(json.dumps({"error": {"message": "slow down", "type": "rate_limit"}}),
                                     status=429))
        r = self.chat("f-429", model="needle-Model-42")
        self.assertEqual(r.status, 429, r)
        self.mock.enqueue(json_scene(CHAT_JSON))
        r = self.chat("f-chat")
        self.assertEqual(r.status, 200, r)
        return middle

    def test_filters(self):
        middle = self.send_mix()
        everything = self.listing()
        self.assertEqual(everything["total"], 7)
        # newest first
        self.assertEqual([it["id"] for it in everything["items"]],
                         ["f-chat", "f-429", "f-codex-1", "f-codex-0", "f-claude-2", "f-claude-1", "f-claude-0"])

        cc = self.listing("?client=claude-code")
        self.assertEqual(cc["total"], 3)
        self.assertEqual(sorted(it["id"] for it in cc["items"]), ["f-claude-0", "f-claude-1", "f-claude-2"])
        self.assertTrue(all(it["client"] == "claude-code" for it in cc["items"]))
        self.assertEqual(self.ids("?client=codex"), ["f-codex-1", "f-codex-0"])
        self.assertEqual(self.listing("?client=nobody")["total"], 0)

        self.assertEqual(self.ids("?status=429"), ["f-429"])
        self.assertEqual(self.ids("?status=4"), ["f-429"], "status=4 means every 4xx")
        self.assertEqual(self.listing("?status=200")["total"], 6)
        self.assertEqual(self.listing("?status=2")["total"], 6)

        self.assertEqual(self.ids("?search=needle"), ["f-429"], "search covers model_in")
        self.assertEqual(self.ids("?search=NEEDLE-model"), ["f-429"], "search ignores ASCII case")
        self.assertEqual(self.ids("?search=f-codex"), ["f-codex-1", "f-codex-0"], "search covers the id")
        self.assertEqual(self.listing("?search=%2Fv1%2Fresponses")["total"], 2, "search covers the path")

        since = self.listing("?since=%.3f" % middle)
        self.assertEqual(since["total"], 4)
        self.assertNotIn("f-claude-0", [it["id"] for it in since["items"]])
        self.assertEqual(self.ids("?client=claude-code&since=%.3f" % middle), [])

        page = self.listing("?limit=2&offset=1")
        self.assertEqual(page["total"], 7, "total counts every match, not the page")
        self.assertEqual([it["id"] for it in page["items"]], ["f-429", "f-codex-1"])
        self.assertEqual(self.ids("?limit=3&offset=6"), ["f-claude-0"])
        self.assertEqual(self.ids("?limit=3&offset=7"), [])

    def test_record_fields_of_a_429(self):
        self.send_mix()
        rec = admin(self.sluice.port, "GET", "/_sluice/requests/f-429").json()
        self.assertEqual(rec["status"], 429)
        self.assertEqual(rec["reason"], "UPSTREAM_HTTP_ERROR")
        self.assertIs(rec["partial"], False)
        self.assertEqual((rec["service"], rec["supplier"], rec["model_in"]), ("chat", "oa", "needle-Model-42"))
        self.assertEqual(rec["path"], "/v1/chat/completions")
        self.assertEqual(rec["method"], "POST")
        ok = admin(self.sluice.port, "GET", "/_sluice/requests/f-chat").json()
        self.assertGreater(ok["bytes_out"], len(CHAT_JSON))
        self.assertGreaterEqual(ok["duration_ms"], ok["ttfb_ms"])
        self.assertEqual(ok["attempts"], 1)


class StatusTest(HistoryCase):
    def test_record_has_the_status_the_client_got(self):
        # An Anthropic client on an openai-chat supplier that answers 200 with
        # a body that is not JSON: the client gets a 502, and so does the record.
        self.start(routes='{ claude = { { match = "*", supplier = "xo" } } }')
        self.mock.enqueue([{"status": 200, "headers": {"content-type": "application/json"},
                            "body": "<html>maintenance</html>"}])
        r = self.post("/v1/messages", json.dumps({"model": "claude-x", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hi"}]}),
                      headers={"x-request-id": "status-of-client", "anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 502, repr(r))
        rec = admin(self.sluice.port, "GET", "/_sluice/requests/status-of-client").json()
        self.assertEqual(rec["status"], 502)


class UsageTest(HistoryCase):
    """DESIGN §10: every record carries the usage tokens the supplier reported."""

    def usage(self, rid):
        return admin(self.sluice.port, "GET", "/_sluice/requests/" + rid).json()["usage"]

    def test_usage_of_a_translated_answer(self):
        self.start(routes='{ claude = { { match = "*", supplier = "xo" } } }')
        self.mock.enqueue(json_scene(CHAT_JSON))
        r = self.post("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 8,
                                       "messages": [{"role": "user", "content": "x"}]},
                      headers={"anthropic-version": "2023-06-01", "x-request-id": "u-tr"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["content"][0]["text"], "answer-text-7781")
        u = self.usage("u-tr")
        self.assertEqual((u["input_tokens"], u["output_tokens"]), (11, 4), u)

    def test_usage_of_passthrough_answers(self):
        self.start()
        self.mock.enqueue(json_scene(CHAT_JSON))
        self.chat("u-json")
        u = self.usage("u-json")
        self.assertEqual((u["input_tokens"], u["output_tokens"]), (11, 4),
                         "passthrough JSON answer: usage not recorded: %r" % u)
        stream = CHAT_STREAM.replace("data: [DONE]", "data: " + json.dumps(
            {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1",
             "choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23}})
            + "\n\ndata: [DONE]")
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"},
                           "chunks": [{"data": p + "\n\n"} for p in stream.split("\n\n") if p]})
        r = self.chat("u-stream", stream=True)
        self.assertEqual(r.body, stream.encode())
        u = self.usage("u-stream")
        self.assertEqual((u["input_tokens"], u["output_tokens"]), (21, 2),
                         "passthrough stream: usage not recorded: %r" % u)


class GetDeleteTest(HistoryCase):
    def setUp(self):
        super().setUp()
        self.start()

    def test_get_by_own_request_id_and_404(self):
        self.mock.enqueue(json_scene(CHAT_JSON))
        r = self.chat("my-own-id-123")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("x-request-id"), "my-own-id-123")
        rec = admin(self.sluice.port, "GET", "/_sluice/requests/my-own-id-123")
        self.assertEqual(rec.status, 200, rec)
        self.assertEqual(rec.json()["id"], "my-own-id-123")
        self.assertEqual(rec.json()["reason"], "COMPLETE")
        missing = admin(self.sluice.port, "GET", "/_sluice/requests/no-such-id")
        self.assertEqual(missing.status, 404)
        self.assertIn("error", missing.json())

    def test_generated_request_id_finds_the_record(self):
        self.mock.enqueue(json_scene(CHAT_JSON))
        r = self.chat()
        rid = r.header("x-request-id")
        self.assertTrue(rid, "sluice must return the id it generated")
        self.assertEqual(admin(self.sluice.port, "GET", "/_sluice/requests/" + rid).json()["id"], rid)
        self.assertEqual(self.ids(), [rid])

    def test_generated_ids_sort_by_time(self):
        # "req_" + 12 hex digits of milliseconds since the epoch + 20 random
        # ones: the history's id index then grows at its right edge.
        before_ms = int(time.time() * 1000)
        rids = []
        for _ in range(3):
            self.mock.enqueue(json_scene(CHAT_JSON))
            rids.append(self.chat().header("x-request-id"))
            time.sleep(0.005)
        after_ms = int(time.time() * 1000)
        for rid in rids:
            self.assertRegex(rid, "^req_[0-9a-f]{32}$")
            self.assertTrue(before_ms - 1 <= int(rid[4:16], 16) <= after_ms + 1, rid)
        self.assertEqual(sorted(rids), rids)
        self.assertEqual(len(set(r[16:] for r in rids)), 3, "the random part differs")

    def test_delete(self):
        self.mock.enqueue(json_scene(CHAT_JSON, repeat=2))
        self.chat("del-a")
        self.chat("del-b")
        self.assertEqual(self.listing()["total"], 2)
        d = admin(self.sluice.port, "DELETE", "/_sluice/requests/del-a")
        self.assertEqual(d.status, 200, d)
        self.assertEqual(admin(self.sluice.port, "GET", "/_sluice/requests/del-a").status, 404)
        self.assertEqual(self.ids(), ["del-b"])
        self.assertEqual(admin(self.sluice.port, "DELETE", "/_sluice/requests/del-a").status, 404)


class BodiesTest(HistoryCase):
    PROMPT = "prompt-marker-31337"

    def one(self):
        self.mock.enqueue(json_scene(CHAT_JSON))
        r = self.chat("body-1", text=self.PROMPT)
        self.assertEqual(r.status, 200)
        return admin(self.sluice.port, "GET", "/_sluice/requests/body-1").json()

    def test_bodies_absent_by_default(self):
        self.start()
        rec = self.one()
        self.assertNotIn("request_body", rec)
        self.assertNotIn("response_body", rec)
        self.assertNotIn(self.PROMPT, json.dumps(rec))
        self.assertNotIn("answer-text-7781", json.dumps(rec))

    def test_bodies_kept_when_enabled(self):
        self.start(bodies=True)
        rec = self.one()
        self.assertIn(self.PROMPT, rec.get("request_body") or "",
                      "history.bodies = true must keep the request body: %r" % rec)
        self.assertIn("answer-text-7781", rec.get("response_body") or "",
                      "history.bodies = true must keep the response body: %r" % rec)
        # Listings never carry bodies, even when stored.
        item = self.listing()["items"][0]
        self.assertNotIn("request_body", item)
        self.assertNotIn("response_body", item)


class SecretsTest(HistoryCase):
    def test_no_secret_in_records_or_listings(self):
        self.start(bodies=True)
        secrets = SUPPLIER_SECRETS + (CLIENT_KEY, GOOGLE_KEY)
        # chat with a client bearer (replaced by the supplier's token)
        self.mock.enqueue(json_scene(CHAT_JSON))
        self.chat("s-chat", headers={"Authorization": "Bearer " + CLIENT_KEY})
        # anthropic passthrough: the client's key goes upstream, not into the record
        self.mock.enqueue(json_scene(ANTHROPIC_JSON))
        self.post("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 8,
                                   "messages": [{"role": "user", "content": "x"}]},
                  headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01", "x-request-id": "s-an"})
        # responses with header auth, answered by an error that is recorded
        self.mock.enqueue(json_scene(json.dumps({"error": {"message": "bad", "type": "invalid_request_error"}}),
                                     status=400))
        self.post("/v1/responses", {"model": "gpt-5-codex", "input": "x"},
                  headers={"Authorization": "Bearer " + CLIENT_KEY, "x-request-id": "s-rs"})
        # gemini with the key in the query string
        self.mock.enqueue(json_scene(GEMINI_JSON))
        self.post("/v1beta/models/gemini-2.5-flash:generateContent?key=" + urllib.parse.quote(GOOGLE_KEY),
                  {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}, headers={"x-request-id": "s-gm"})
        # a stream cut by the upstream, so an error text is recorded too
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"}, "close_after": True,
                           "chunks": [{"data": CHAT_STREAM.split("\n\n")[0] + "\n\n"}]})
        self.chat("s-cut", stream=True, headers={"Authorization": "Bearer " + CLIENT_KEY})

        listing = admin(self.sluice.port, "GET", "/_sluice/requests?limit=1000")
        self.assertEqual(listing.json()["total"], 5)
        texts = [listing.body.decode()]
        for rid in ("s-chat", "s-an", "s-rs", "s-gm", "s-cut"):
            r = admin(self.sluice.port, "GET", "/_sluice/requests/" + rid)
            self.assertEqual(r.status, 200, rid)
            texts.append(r.body.decode())
        for text in texts:
            for s in secrets:
                self.assertNotIn(s, text)
        gm = admin(self.sluice.port, "GET", "/_sluice/requests/s-gm").json()
        self.assertTrue(gm["path"].startswith("/v1beta/models/gemini-2.5-flash:generateContent"), gm)
        cut = admin(self.sluice.port, "GET", "/_sluice/requests/s-cut").json()
        self.assertEqual(cut["reason"], "UPSTREAM_EOF_EARLY")


class AdminTokenTest(harness.SluiceTestCase):
    def setUp(self):
        super().setUp()
        d = tempfile.mkdtemp(prefix="sluice-hist-")
        self.addCleanup(shutil.rmtree, d, True)
        extra = '  admin = { token = "%s" },\n  history = { path = "%s/history.db" },\n' % (ADMIN_TOKEN, d)
        # The harness waits for an unauthenticated /_sluice/health; with a
        # token set that is 401, so start without waiting and wait here.
        s = harness.Sluice(harness.sluice_config(self.mock.port, extra=extra), wait=False)
        self.addCleanup(s.cleanup)
        self.sluice = s

        def up():
            try:
                return admin(s.port, "GET", "/_sluice/health", ADMIN_TOKEN).status == 200
            except OSError:
                return s.proc.poll() is not None
        self.assertTrue(harness.wait_for(up, timeout=10), "sluice did not start" + self.diag())
        self.assertIsNone(s.proc.poll(), "sluice exited" + self.diag())

    def test_token_required_on_admin_endpoints(self):
        self.mock.enqueue(json_scene(CHAT_JSON))
        r = self.post("/v1/chat/completions", chat_body(), headers={"x-request-id": "adm-1"})
        self.assertEqual(r.status, 200, "the admin token must not guard the proxy")
        port = self.sluice.port
        for path in ("/_sluice/requests", "/_sluice/requests/adm-1", "/_sluice/metrics"):
            with self.subTest(path=path):
                for bad in (None, "wrong-token-xx", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", ADMIN_TOKEN.upper()):
                    r = admin(port, "GET", path, bad)
                    self.assertEqual(r.status, 401, "token %r on %s: %r" % (bad, path, r))
                    self.assertNotIn(b"adm-1", r.body)
                r = harness.request(port, "GET", path, headers={"Authorization": ADMIN_TOKEN})
                self.assertEqual(r.status, 401, "a token without 'Bearer ' must not pass")
                r = admin(port, "GET", path, ADMIN_TOKEN)
                self.assertEqual(r.status, 200, "%s: %r" % (path, r))
        self.assertEqual(admin(port, "DELETE", "/_sluice/requests/adm-1", "nope").status, 401)
        self.assertEqual(admin(port, "GET", "/_sluice/requests/adm-1", ADMIN_TOKEN).status, 200,
                         "an unauthorized DELETE must not delete")
        self.assertEqual(admin(port, "DELETE", "/_sluice/requests/adm-1", ADMIN_TOKEN).status, 200)
        self.assertEqual(admin(port, "GET", "/_sluice/requests/adm-1", ADMIN_TOKEN).status, 404)


if __name__ == "__main__":
    harness.main()
