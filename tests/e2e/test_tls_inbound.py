"""Inbound TLS (issue 15): a listener with `tls = { cert, key }` speaks HTTPS
on the worker's loop. Real clients — curl with --cacert and Python's ssl —
reach the gateway through it with a throwaway certificate the test makes with
`openssl req`; plain HTTP sent to the TLS port gets a clear 400; a client
that never finishes its handshake is closed at the header timeout; SIGHUP
serves a new certificate to the next connection while open ones go on, and
a broken pair is refused with the old one kept."""
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile

import harness
from harness import SluiceTestCase

CHAT = json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
ANSWER = {"id": "chatcmpl-tls", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "over https"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def make_cert(directory, name):
    """A self-signed certificate for 127.0.0.1/localhost whose subject CN is `name`."""
    cert, key = os.path.join(directory, name + ".crt"), os.path.join(directory, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", cert, "-subj", "/CN=" + name,
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class InboundTlsTest(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="sluice-tls-")
        cls.first = make_cert(cls.dir, "first")
        cls.second = make_cert(cls.dir, "second")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        super().setUp()
        # The listener's files: the test swaps their contents to rotate.
        self.cert = os.path.join(self.dir, "live-%s.crt" % self._testMethodName)
        self.key = os.path.join(self.dir, "live-%s.key" % self._testMethodName)
        self.install(self.first)

    def install(self, pair):
        shutil.copyfile(pair[0], self.cert)
        shutil.copyfile(pair[1], self.key)

    def start(self, header_timeout=10):
        self.tls_port = harness.free_port()
        listen = ('listen   = { "127.0.0.1:@PORT@", { addr = "127.0.0.1:%d", tls = { cert = %s, key = %s } } },'
                  % (self.tls_port, harness.lua_str(self.cert), harness.lua_str(self.key)))
        limits = "{ max_body = 1024 * 1024, header_timeout = %d, keepalive_timeout = 60 }" % header_timeout
        text = harness.sluice_config(self.mock.port, limits=limits)
        text = text.replace('listen   = { "127.0.0.1:@PORT@" },', listen)
        return self.start_sluice(text)

    def context(self, pair):
        return ssl.create_default_context(cafile=pair[0])

    def https(self, pair, method, path, body=None, headers=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.tls_port, context=self.context(pair),
                                           timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def peer_subject(self, pair):
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=10) as raw:
            with self.context(pair).wrap_socket(raw, server_hostname="localhost") as s:
                return dict(x[0] for x in s.getpeercert()["subject"])["commonName"]

    def test_curl_with_cacert_proxies_a_request(self):
        self.start()
        self.mock.enqueue({"body": json.dumps(ANSWER)})
        p = subprocess.run(["curl", "-sS", "--cacert", self.first[0], "-w", "\n%{http_code} %{http_version}",
                            "-H", "content-type: application/json", "--data", CHAT,
                            "https://localhost:%d/v1/chat/completions" % self.tls_port],
                           capture_output=True, timeout=30, text=True)
        self.assertEqual(p.returncode, 0, p.stderr + self.diag())
        body, status = p.stdout.rsplit("\n", 1)
        self.assertEqual(status, "200 1.1")  # ALPN: sluice speaks http/1.1
        self.assertEqual(json.loads(body), ANSWER)
        self.assertEqual(self.only_request()["path"], "/v1/chat/completions")

    def test_python_ssl_keeps_the_connection_alive(self):
        self.start()
        conn = http.client.HTTPSConnection("127.0.0.1", self.tls_port, context=self.context(self.first),
                                           timeout=10)
        try:
            for _ in range(3):
                conn.request("GET", "/_sluice/health")
                r = conn.getresponse()
                self.assertEqual(r.status, 200)
                self.assertEqual(json.loads(r.read())["status"], "ok")
            # One handshake, three answers: the socket stayed the same.
            self.assertIsNotNone(conn.sock)
        finally:
            conn.close()

    def test_connection_close_ends_with_a_clean_tls_close(self):
        self.start()
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=10) as raw:
            with self.context(self.first).wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET /_sluice/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    # A close without close_notify raises SSLEOFError here.
                    got = s.recv(65536)
                    if not got:
                        break
                    data += got
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data)

    def test_plain_http_to_the_tls_port_is_refused_cleanly(self):
        self.start()
        c = harness.RawConn(self.tls_port)
        c.send(b"GET /_sluice/health HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 400)
        self.assertIn(b"https://", r.body)
        self.assertTrue(c.is_closed_by_peer(), "the connection stays open after the refusal")
        # The listener still serves TLS afterwards.
        self.assertEqual(self.https(self.first, "GET", "/_sluice/health")[0], 200)

    def test_a_stalled_handshake_is_closed_at_the_header_timeout(self):
        self.start(header_timeout=1)
        quiet = harness.RawConn(self.tls_port)
        half = harness.RawConn(self.tls_port)
        half.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello that never ends
        self.assertTrue(quiet.is_closed_by_peer(timeout=8), "a silent TLS client is never closed")
        self.assertTrue(half.is_closed_by_peer(timeout=8), "a half handshake is never closed")

    def test_sighup_serves_a_new_certificate_to_the_next_connection(self):
        s = self.start()
        self.assertEqual(self.peer_subject(self.first), "first")
        before = http.client.HTTPSConnection("127.0.0.1", self.tls_port, context=self.context(self.first),
                                             timeout=10)
        before.request("GET", "/_sluice/health")
        self.assertEqual(before.getresponse().read() and 200, 200)
        self.install(self.second)
        s.reload()
        self.assertTrue(harness.wait_for(lambda: self.try_subject(self.second) == "second", 10),
                        "the new certificate is not served after SIGHUP" + self.diag())
        # The connection opened before the reload goes on with its session.
        before.request("GET", "/_sluice/health")
        self.assertEqual(before.getresponse().status, 200)
        before.close()

    def try_subject(self, pair):
        try:
            return self.peer_subject(pair)
        except (ssl.SSLError, OSError):
            return None

    def test_a_broken_pair_on_reload_is_refused_and_the_old_one_kept(self):
        s = self.start()
        # The second certificate with the first one's key: not a pair.
        shutil.copyfile(self.second[0], self.cert)
        r = harness.request(s.port, "POST", "/_sluice/reload", timeout=30)
        body = r.json()
        self.assertIs(body["reloaded"], False, body)
        self.assertIn("listen[2].tls", body["error"]["message"])
        self.assertEqual(self.peer_subject(self.first), "first")
        self.assertEqual(self.https(self.first, "GET", "/_sluice/health")[0], 200)

    def test_check_names_a_missing_certificate(self):
        text = harness.sluice_config(self.mock.port).replace(
            'listen   = { "127.0.0.1:@PORT@" },',
            'listen = { { addr = "127.0.0.1:@PORT@", tls = { cert = "/nonexistent/x.crt", key = %s } } },'
            % harness.lua_str(self.key))
        code, out = harness.run_check(text)
        self.assertNotEqual(code, 0)
        self.assertIn("listen[1].tls.cert", out)

    def test_startup_refuses_a_key_that_does_not_match(self):
        shutil.copyfile(self.second[1], self.key)
        text = harness.sluice_config(self.mock.port).replace(
            'listen   = { "127.0.0.1:@PORT@" },',
            'listen = { "127.0.0.1:@PORT@", { addr = "127.0.0.1:%d", tls = { cert = %s, key = %s } } },'
            % (harness.free_port(), harness.lua_str(self.cert), harness.lua_str(self.key)))
        with self.assertRaises(RuntimeError) as e:
            harness.start_sluice(text)
        self.assertIn("listen[2].tls", str(e.exception))


if __name__ == "__main__":
    harness.main()
