"""test_inbound_keys — the gateway's own API keys (`keys = { ... }`).

With keys configured, every client must present one of them, the way its
SDK sends an API key: `Authorization: Bearer`, `x-api-key` (Anthropic) or
`x-goog-api-key` / `?key=` (Gemini). A missing or wrong key is a 401 in the
client's own protocol shape, and nothing goes upstream. The right key works,
and never travels upstream: the supplier gets its own credentials. Keys are
redacted everywhere a user might look: access log, stderr, the history and
/_sluice/requests. A non-loopback listen address without keys is refused.
"""

import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import request  # noqa: E402

KEY_A = "gw-key-ALPHA-5521-secret"
KEY_B = "gw-key-BRAVO-9034-secret"
WRONG = "gw-key-ALPHA-5521-secreT"   # one character off
UPSTREAM_ANT = "sk-ant-upstream-SECRET-118"

CHAT = '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}'
ANTH = '{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
GEM = '{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
GEM_PATH = "/v1beta/models/gemini-2.5-flash:generateContent"


def keyed_config(mock_port, history_dir, keys=(KEY_A, KEY_B)):
    # `an` is passthrough in the standard config, which cannot go with keys.
    cfg = harness.sluice_config(
        mock_port, extra='  keys = { %s },\n  history = { path = "%s/history.db", bodies = true },\n  log = { access = "@ACCESS_LOG@", level = "debug" },\n'
        % (", ".join(harness.lua_str(k) for k in keys), history_dir))
    cfg = cfg.replace('  log      = { access = "@ACCESS_LOG@" },\n', "")
    return cfg.replace('auth = { type = "passthrough" }',
                       'auth = { type = "header", name = "x-api-key", value = "%s" }' % UPSTREAM_ANT)


class InboundKeysTest(harness.SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="sluice-keys-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.start_sluice(keyed_config(self.mock.port, self.dir))

    def upstream_count(self):
        return len(self.mock.requests())

    # ------------------------------------------------------------------ refusals

    def test_missing_key_is_401_in_each_protocol_shape(self):
        port = self.sluice.port
        r = request(port, "POST", "/v1/chat/completions", body=CHAT)
        self.assertEqual(r.status, 401, repr(r) + self.diag())
        self.assertIn("missing API key", r.json()["error"]["message"])

        r = request(port, "POST", "/v1/messages", body=ANTH, headers={"anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 401, repr(r))
        body = r.json()
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "authentication_error")

        r = request(port, "POST", GEM_PATH, body=GEM)
        self.assertEqual(r.status, 401, repr(r))
        self.assertEqual(r.json()["error"]["code"], 401)
        self.assertEqual(r.json()["error"]["status"], "UNAUTHENTICATED")

        r = request(port, "POST", "/v1/responses", body='{"model":"gpt-5-codex","input":"hi"}')
        self.assertEqual(r.status, 401, repr(r))
        self.assertIn("error", r.json())

        r = request(port, "GET", "/v1/models")
        self.assertEqual(r.status, 401, "the model list needs a key too: %r" % r)
        self.assertEqual(self.upstream_count(), 0, "a refused request must not reach the upstream")

    def test_wrong_key_is_401_however_it_is_sent(self):
        port = self.sluice.port
        cases = [
            ("/v1/chat/completions", CHAT, {"Authorization": "Bearer " + WRONG}),
            ("/v1/chat/completions", CHAT, {"Authorization": "Bearer " + KEY_A[:-1]}),  # a prefix
            ("/v1/chat/completions", CHAT, {"Authorization": "Bearer " + KEY_A + "x"}),  # longer
            ("/v1/chat/completions", CHAT, {"Authorization": "Basic " + KEY_A}),        # not a bearer
            ("/v1/messages", ANTH, {"x-api-key": WRONG, "anthropic-version": "2023-06-01"}),
            (GEM_PATH, GEM, {"x-goog-api-key": WRONG}),
            (GEM_PATH + "?key=" + WRONG, GEM, {}),
        ]
        for path, body, headers in cases:
            with self.subTest(path=path, headers=headers):
                r = request(port, "POST", path, body=body, headers=headers)
                self.assertEqual(r.status, 401, repr(r))
                self.assertNotIn(WRONG.encode(), r.body, "the presented key must not be echoed")
        self.assertEqual(self.upstream_count(), 0)

    def test_parameters_that_merely_end_in_key_are_not_keys(self):
        for param in ("cache_key", "monkey", "api_key"):
            r = request(self.sluice.port, "POST", "%s?%s=%s" % (GEM_PATH, param, KEY_A), body=GEM)
            self.assertEqual(r.status, 401, "?%s= was taken as the gateway key: %r" % (param, r))
        self.assertEqual(self.upstream_count(), 0)

    def test_unknown_path_without_a_key_is_401_not_404(self):
        r = request(self.sluice.port, "POST", "/v1/nothing/here", body="{}")
        self.assertEqual(r.status, 401, "an unauthenticated client learns nothing about routes: %r" % r)
        r = request(self.sluice.port, "POST", "/v1/nothing/here", body="{}",
                    headers={"Authorization": "Bearer " + KEY_A})
        self.assertEqual(r.status, 404, repr(r))

    # ------------------------------------------------------------------ acceptance

    def test_right_key_works_in_every_form_and_never_goes_upstream(self):
        port = self.sluice.port
        cases = [
            ("/v1/chat/completions", CHAT, {"Authorization": "Bearer " + KEY_A}, "oa"),
            ("/v1/chat/completions", CHAT, {"Authorization": "bearer " + KEY_B}, "oa"),
            ("/v1/messages", ANTH, {"x-api-key": KEY_B, "anthropic-version": "2023-06-01"}, "an"),
            (GEM_PATH, GEM, {"x-goog-api-key": KEY_A}, "gm"),
            (GEM_PATH + "?key=" + KEY_B, GEM, {}, "gm"),
        ]
        for path, body, headers, supplier in cases:
            with self.subTest(path=path, headers=headers):
                self.mock.reset()
                r = request(port, "POST", path, body=body, headers=headers)
                self.assertEqual(r.status, 200, repr(r) + self.diag())
                up = self.only_request()
                wire = json.dumps(up["headers"]) + up["path"] + up["body"]
                self.assertNotIn(KEY_A, wire, "a gateway key went upstream")
                self.assertNotIn(KEY_B, wire, "a gateway key went upstream")
                if supplier == "oa":
                    self.assertEqual(harness.header_values(up, "authorization"), ["Bearer sk-upstream-secret-oa"])
                elif supplier == "an":
                    self.assertEqual(harness.header_values(up, "x-api-key"), [UPSTREAM_ANT])
                else:
                    self.assertEqual(harness.header_values(up, "x-goog-api-key"), [])
        r = request(port, "GET", "/v1/models", headers={"Authorization": "Bearer " + KEY_A})
        self.assertEqual(r.status, 200, repr(r))

    # ------------------------------------------------------------------ redaction

    def test_keys_are_redacted_everywhere(self):
        port = self.sluice.port
        sent = [
            ("/v1/chat/completions", CHAT, {"Authorization": "Bearer " + KEY_A}),
            ("/v1/chat/completions", CHAT, {"Authorization": "Bearer " + WRONG}),
            ("/v1/messages", ANTH, {"x-api-key": KEY_B, "anthropic-version": "2023-06-01"}),
            (GEM_PATH + "?alt=json&key=" + KEY_A, GEM, {}),
            (GEM_PATH + "?key=" + WRONG, GEM, {}),
            # a user pasting the key into a prompt: the stored body is redacted too
            ("/v1/chat/completions", CHAT.replace('"hi"', '"my key is %s"' % KEY_B),
             {"Authorization": "Bearer " + KEY_B}),
        ]
        for path, body, headers in sent:
            request(port, "POST", path, body=body, headers=headers)
        harness.wait_for(lambda: len(self.sluice.access_log().splitlines()) >= len(sent), 5)
        self.assertEqual(len(self.sluice.access_log().splitlines()), len(sent))
        listing = request(port, "GET", "/_sluice/requests?limit=50")
        self.assertEqual(listing.status, 200, repr(listing))
        items = listing.json()["items"]
        self.assertEqual(len(items), len(sent), listing.body[:400])
        details = "".join(request(port, "GET", "/_sluice/requests/" + it["id"]).body.decode() for it in items)
        searched = request(port, "GET", "/_sluice/requests?search=" + KEY_A).json()["items"]
        self.assertEqual(searched, [], "history search finds a gateway key")
        places = {"access log": self.sluice.access_log(), "stderr": self.sluice.stderr(),
                  "/_sluice/requests": listing.body.decode(), "history records": details}
        for where, text in places.items():
            for secret in (KEY_A, KEY_B, WRONG, UPSTREAM_ANT):
                self.assertNotIn(secret, text, "%s leaked into %s" % (secret, where))
        # The record of the refused one still says what happened.
        statuses = sorted(it["status"] for it in items)
        self.assertEqual(statuses, [200, 200, 200, 200, 401, 401])
        self.assertIn("my key is [redacted]", details, "history.bodies keeps the body, minus the key")


class PublicListenTest(harness.SluiceTestCase):
    def test_public_listen_without_keys_is_refused(self):
        cfg = harness.sluice_config(self.mock.port, extra='  admin = { token = "admin-token-123456" },\n')
        cfg = cfg.replace('"127.0.0.1:@PORT@"', '"0.0.0.0:@PORT@"')
        code, out = harness.run_check(cfg)
        self.assertNotEqual(code, 0, out)
        self.assertIn("keys", out)
        self.assertIn("non-loopback", out)

    def test_public_listen_with_keys_is_accepted(self):
        cfg = keyed_config(self.mock.port, "/tmp").replace(
            '"127.0.0.1:@PORT@"', '"0.0.0.0:@PORT@"').replace(
            "  keys =", '  admin = { token = "admin-token-123456" },\n  keys =')
        code, out = harness.run_check(cfg)
        self.assertEqual(code, 0, out)
        for secret in (KEY_A, KEY_B, UPSTREAM_ANT):
            self.assertNotIn(secret, out)

    def test_short_key_is_refused(self):
        code, out = harness.run_check(keyed_config(self.mock.port, "/tmp", keys=("short",)))
        self.assertNotEqual(code, 0)
        self.assertIn("keys[1]", out)


if __name__ == "__main__":
    harness.main()
