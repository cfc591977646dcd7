"""Upstream TLS and HTTP/2 (issue 2): against a real nginx on loopback with a
throwaway self-signed certificate, sluice negotiates HTTP/2 when the upstream
offers it, passes the answer through intact, and by default refuses a
certificate it cannot verify (502 naming the supplier, reason UPSTREAM_TLS)."""
import json
import os
import tempfile
import time

import harness
from harness import SluiceTestCase

ANSWER = {"id": "chatcmpl-tls", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "over h2"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}

# The answer is a static file; nginx's static handler refuses POST, so it is
# served as for a GET instead.
SERVER = """
        default_type application/json;
        location = /v1/chat/completions { alias %(dir)s/answer.json; error_page 405 =200 $uri; }
"""


class UpstreamTlsTest(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.nginx = harness.Nginx(SERVER, files={"answer.json": json.dumps(ANSWER)})
        cls.port = cls.nginx.port

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def start(self):
        db = os.path.join(tempfile.mkdtemp(), "history.db")
        base = "https://127.0.0.1:%d/v1" % self.port
        extra = ('    insecure = { protocol = "openai-chat", base_url = "%s", auth = { type = "none" }, verify_tls = false },\n'
                 '    strict = { protocol = "openai-chat", base_url = "%s", auth = { type = "none" } },\n' % (base, base))
        routes = '{ chat = { { match = "strict-*", supplier = "strict" }, { match = "*", supplier = "insecure" } } }'
        return self.start_sluice(suppliers_extra=extra, routes=routes,
                                 extra='history = { path = "%s" },\n' % db)

    def test_http2_over_tls_when_offered(self):
        self.start()
        before = len(self.nginx.access_lines())
        body = json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
        r = self.post("/v1/chat/completions", body, {"content-type": "application/json"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), ANSWER)
        time.sleep(0.2)
        lines = self.nginx.access_lines()[before:]
        self.assertEqual(lines, ["POST /v1/chat/completions HTTP/2.0 200"])

    def test_unverifiable_certificate_is_refused_by_default(self):
        s = self.start()
        body = json.dumps({"model": "strict-gpt", "messages": [{"role": "user", "content": "hi"}]})
        r = self.post("/v1/chat/completions", body, {"content-type": "application/json",
                                                     "x-request-id": "tls-strict"})
        self.assertEqual(r.status, 502, r)
        self.assertIn("strict", r.json()["error"]["message"])
        rec = harness.request(s.port, "GET", "/_sluice/requests/tls-strict").json()
        self.assertEqual(rec["reason"], "UPSTREAM_TLS")
        self.assertFalse(rec["partial"])


if __name__ == "__main__":
    harness.main()
