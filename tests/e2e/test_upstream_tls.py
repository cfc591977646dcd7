"""Upstream TLS and HTTP/2 (issue 2): against a real nginx on loopback with a
throwaway self-signed certificate, sluice negotiates HTTP/2 when the upstream
offers it, passes the answer through intact, and by default refuses a
certificate it cannot verify (502 naming the supplier, reason UPSTREAM_TLS)."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import harness
from harness import SluiceTestCase

ANSWER = {"id": "chatcmpl-tls", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "over h2"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 64; }
http {
    log_format proto '$request $status';
    access_log %(dir)s/access.log proto;
    client_body_temp_path %(dir)s/tmp;
    proxy_temp_path %(dir)s/tmp;
    fastcgi_temp_path %(dir)s/tmp;
    uwsgi_temp_path %(dir)s/tmp;
    scgi_temp_path %(dir)s/tmp;
    server {
        listen 127.0.0.1:%(port)d ssl http2;
        ssl_certificate %(dir)s/cert.pem;
        ssl_certificate_key %(dir)s/key.pem;
        default_type application/json;
        # nginx's static handler refuses POST; serve the file as a GET instead.
        location = /v1/chat/completions { alias %(dir)s/answer.json; error_page 405 =200 $uri; }
    }
}
"""


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class UpstreamTlsTest(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="sluice-tls-")
        os.makedirs(os.path.join(cls.dir, "tmp"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", os.path.join(cls.dir, "key.pem"),
                        "-out", os.path.join(cls.dir, "cert.pem")],
                       check=True, capture_output=True)
        with open(os.path.join(cls.dir, "answer.json"), "w") as f:
            json.dump(ANSWER, f)
        cls.port = harness.free_port()
        conf = os.path.join(cls.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF % {"dir": cls.dir, "port": cls.port})
        cls.nginx = subprocess.Popen(["nginx", "-c", conf, "-p", cls.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not harness.wait_for(lambda: port_open(cls.port), timeout=10):
            raise RuntimeError("nginx did not start: %s" % cls.nginx.stderr.read())

    @classmethod
    def tearDownClass(cls):
        cls.nginx.terminate()
        cls.nginx.wait(10)
        shutil.rmtree(cls.dir, ignore_errors=True)

    def start(self):
        db = os.path.join(tempfile.mkdtemp(), "history.db")
        base = "https://127.0.0.1:%d/v1" % self.port
        extra = ('    insecure = { protocol = "openai-chat", base_url = "%s", auth = { type = "none" }, verify_tls = false },\n'
                 '    strict = { protocol = "openai-chat", base_url = "%s", auth = { type = "none" } },\n' % (base, base))
        routes = '{ chat = { { match = "strict-*", supplier = "strict" }, { match = "*", supplier = "insecure" } } }'
        return self.start_sluice(suppliers_extra=extra, routes=routes,
                                 extra='history = { path = "%s" },\n' % db)

    def access_lines(self):
        with open(os.path.join(self.dir, "access.log")) as f:
            return f.read().splitlines()

    def test_http2_over_tls_when_offered(self):
        self.start()
        before = len(self.access_lines())
        body = json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
        r = self.post("/v1/chat/completions", body, {"content-type": "application/json"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), ANSWER)
        time.sleep(0.2)
        lines = self.access_lines()[before:]
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
