"""test_core_secrets — the access log records every request and no secret.

Access logs get shipped to places API keys must never go. Clients send keys
in Authorization, x-api-key, x-goog-api-key, cookies and Gemini's ?key=
query parameter; suppliers' own keys live in the config. None of them may
appear in the access log or on stderr, whatever the request's fate (proxied,
rejected, failed upstream) — while the log still has one JSON line per
request with enough in it to be useful.
"""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import request  # noqa: E402

SECRETS = {
    "authorization": "sk-client-authz-SECRET-0001",
    "x-api-key": "sk-ant-client-SECRET-0002",
    "x-goog-api-key": "AIza-client-SECRET-0003",
    "query key": "AIza-query-SECRET-0004",
    "cookie": "session-SECRET-0005",
    "supplier oa": "sk-upstream-secret-oa",
    "supplier rs": "sk-upstream-secret-rs",
}


def flat_values(obj):
    """Every scalar in a JSON document."""
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in flat_values(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in flat_values(x)]
    return [obj]


class AccessLogSecretsTest(harness.SluiceTestCase):
    def test_one_json_line_per_request_and_no_secrets(self):
        s = self.start_sluice()
        anth = '{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
        chat = '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}'
        resp_body = '{"model":"gpt-5-codex","input":"hi"}'
        gem = '{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
        cookie = {"Cookie": "sid=" + SECRETS["cookie"]}
        sent = [
            ("/v1/messages", anth, dict(cookie, **{"x-api-key": SECRETS["x-api-key"],
                                                   "anthropic-version": "2023-06-01"}), {}),
            ("/v1/chat/completions", chat, dict(cookie, Authorization="Bearer " + SECRETS["authorization"]), {}),
            ("/v1/responses", resp_body, {"Authorization": "Bearer " + SECRETS["authorization"]}, {}),
            ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=" + SECRETS["query key"],
             gem, {"x-goog-api-key": SECRETS["x-goog-api-key"]},
             {"headers": {"Content-Type": "text/event-stream"},
              "chunks": [{"data": 'data: {"candidates":[]}\r\n\r\n'}]}),
            # rejected and failed requests are logged too
            ("/v1/chat/completions", chat, {"Authorization": "Bearer " + SECRETS["authorization"]},
             {"status": 500, "body": '{"error":{"message":"upstream broke","type":"server_error"}}',
              "repeat": 10}),  # repeats: sluice may retry a 500
            ("/no/such/path", "{}", {"Authorization": "Bearer " + SECRETS["authorization"],
                                     "x-api-key": SECRETS["x-api-key"]}, None),
        ]
        for path, body, headers, scene in sent:
            if scene is not None:
                self.mock.enqueue(scene)
            r = request(s.port, "POST", path, body=body, headers=headers)
            self.assertLess(r.status, 600)
        n = len(sent)
        harness.wait_for(lambda: len(s.access_log().splitlines()) >= n, 5)
        lines = [ln for ln in s.access_log().splitlines() if ln.strip()]
        self.assertEqual(len(lines), n, "want one access-log line per request, got:\n" + "\n".join(lines))
        for line, (path, _, _, _) in zip(lines, sent):
            rec = json.loads(line)          # every line is a JSON object
            self.assertIsInstance(rec, dict)
            self.assertIn(path.split("?")[0], line, "access log line does not name the path")
        # The status a user would grep for is in each line (as a number or a string).
        for i, status in ((0, 200), (4, 500), (5, 404)):
            vals = flat_values(json.loads(lines[i]))
            self.assertTrue(status in vals or str(status) in vals,
                            "status %d missing from %s" % (status, lines[i]))
        log, err = s.access_log(), s.stderr()
        for what, secret in SECRETS.items():
            self.assertNotIn(secret, log, "%s leaked into the access log" % what)
            self.assertNotIn(secret, err, "%s leaked onto stderr" % what)

    def test_admin_config_shows_the_config_but_no_secret(self):
        extra = ('    hx = { protocol = "openai-chat", base_url = "http://127.0.0.1:9/v1", '
                 'headers = { ["x-extra-key"] = "sk-extra-header-secret-77" } },\n')
        self.start_sluice(suppliers_extra=extra)
        r = harness.request(self.sluice.port, "GET", "/_sluice/config")
        self.assertEqual(r.status, 200, r)
        cfg = r.json()
        self.assertEqual(cfg["suppliers"]["oa"]["protocol"], "openai-chat")
        self.assertEqual(cfg["suppliers"]["rs"]["auth"]["name"], "x-api-key")
        self.assertIn("x-extra-key", cfg["suppliers"]["hx"]["headers"])
        for secret in (SECRETS["supplier oa"], SECRETS["supplier rs"], "sk-extra-header-secret-77"):
            self.assertNotIn(secret, r.body.decode(), "a secret shown by /_sluice/config")

    def test_stderr_access_log_has_no_secrets(self):
        cfg = harness.sluice_config(self.mock.port).replace('access = "@ACCESS_LOG@"', 'access = "stderr"')
        s = self.start_sluice(cfg)
        r = request(s.port, "POST", "/v1/chat/completions",
                    body='{"model":"gpt-4.1","messages":[]}',
                    headers={"Authorization": "Bearer " + SECRETS["authorization"],
                             "Cookie": "sid=" + SECRETS["cookie"]})
        self.assertEqual(r.status, 200)
        self.assertTrue(harness.wait_for(lambda: "/v1/chat/completions" in s.stderr(), 5),
                        "access line not written to stderr" + self.diag())
        for what, secret in SECRETS.items():
            self.assertNotIn(secret, s.stderr(), "%s leaked onto stderr" % what)


if __name__ == "__main__":
    harness.main()
