"""test_core_lifecycle — scripts that fail, configs that change, and shutting down.

Ops edit Lua while sluice serves traffic. A hook that throws or loops forever
must cost exactly one request (answered 500 in the client's protocol) and
never the worker. A reload with a broken config must keep the old one
serving; a fixed config must then take effect without a restart. SIGTERM must
let a slow stream finish and exit 0. The command line (--check, --version)
is part of the same story: it is how ops test a config before reloading.
"""

import json
import os
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import RawConn, build_request, request, sluice_config  # noqa: E402

ANTHROPIC_MSG = '{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
CHAT_MSG = '{"model":"%s","messages":[{"role":"user","content":"hi"}]}'
GEMINI_MSG = '{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'

# Fails the first N calls, then lets requests through: the closure lives in
# the worker's VM, so "the next request succeeds" is observable.
FAIL_FIRST = """local calls = 0
local function fail_first(n, how)
  return function(ctx)
    calls = calls + 1
    if calls <= n then how() end
  end
end
"""


class ScriptFailureTest(harness.SluiceTestCase):
    def test_script_error_is_protocol_shaped_500_then_next_succeeds(self):
        self.start_sluice(prelude=FAIL_FIRST,
                          on_request='fail_first(3, function() error("boom-from-on-request") end)')
        # Anthropic shape
        r = request(self.sluice.port, "POST", "/v1/messages", body=ANTHROPIC_MSG,
                    headers={"anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 500, "%r%s" % (r, self.diag()))
        body = r.json()
        self.assertEqual(body["type"], "error")
        self.assertTrue(body["error"]["message"])
        # OpenAI shape
        r = request(self.sluice.port, "POST", "/v1/chat/completions", body=CHAT_MSG % "gpt-4.1")
        self.assertEqual(r.status, 500, r)
        self.assertTrue(r.json()["error"]["message"])
        # Gemini shape
        r = request(self.sluice.port, "POST", "/v1beta/models/gemini-2.5-flash:generateContent",
                    body=GEMINI_MSG)
        self.assertEqual(r.status, 500, r)
        self.assertEqual(r.json()["error"]["code"], 500)
        self.assertEqual(self.mock.requests(), [], "a failed hook must not reach the upstream")
        # The fourth call passes: same worker, same VM, request proxied.
        self.mock.enqueue({"body": '{"after":"error"}'})
        r = request(self.sluice.port, "POST", "/v1/chat/completions", body=CHAT_MSG % "gpt-4.1")
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(r.body, b'{"after":"error"}')
        self.assertIn("boom-from-on-request", self.sluice.stderr(), "the script error was not logged")

    def test_runaway_loop_is_500_and_worker_survives(self):
        self.start_sluice(prelude=FAIL_FIRST,
                          on_request="fail_first(1, function() while true do end end)")
        t0 = time.monotonic()
        r = request(self.sluice.port, "POST", "/v1/chat/completions", body=CHAT_MSG % "gpt-4.1", timeout=30)
        self.assertEqual(r.status, 500, "%r%s" % (r, self.diag()))
        self.assertTrue(r.json()["error"]["message"])
        self.assertLess(time.monotonic() - t0, 20)
        self.assertEqual(self.sluice.health().status, 200)
        self.mock.enqueue({"body": '{"after":"loop"}'})
        r = request(self.sluice.port, "POST", "/v1/chat/completions", body=CHAT_MSG % "gpt-4.1")
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(r.body, b'{"after":"loop"}')


def routed_config(mock_port, model):
    """Every chat request goes to `oa` with its model rewritten to `model`."""
    return sluice_config(mock_port, routes="""{
    chat = { { match = "*", supplier = "oa", model = "%s" } },
  }""" % model)


class ReloadTest(harness.SluiceTestCase):
    def upstream_model(self):
        self.mock.reset()
        r = request(self.sluice.port, "POST", "/v1/chat/completions", body=CHAT_MSG % "whatever")
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        return json.loads(self.only_request()["body"])["model"]

    def wait_for_model(self, model, timeout=10):
        return harness.wait_for(lambda: self.upstream_model() == model, timeout, interval=0.2)

    def test_broken_config_keeps_serving_then_fix_takes_effect(self):
        s = self.start_sluice(routed_config(self.mock.port, "model-A"))
        self.assertEqual(self.upstream_model(), "model-A")
        broken = [
            "return { listen = { \"127.0.0.1:@PORT@\" }, suppliers = {",          # Lua syntax error
            routed_config(self.mock.port, "model-X").replace('"openai-chat"', '"no-such-protocol"'),
            routed_config(self.mock.port, "model-X").replace('supplier = "oa"', 'supplier = "missing"'),
        ]
        for text in broken:
            before = len(s.stderr())
            s.write_config(text)
            s.reload()
            # The reload is reported (stderr grows) and the old config keeps serving.
            harness.wait_for(lambda: len(s.stderr()) > before, 5)
            self.assertIsNone(s.proc.poll(), "sluice exited on a broken reload" + self.diag())
            for _ in range(3):
                self.assertEqual(self.upstream_model(), "model-A", "broken config took effect" + self.diag())
        s.write_config(routed_config(self.mock.port, "model-B"))
        s.reload()
        self.assertTrue(self.wait_for_model("model-B"), "fixed config never took effect" + self.diag())
        self.assertEqual(self.upstream_model(), "model-B")

    def test_reload_with_multiple_workers_reaches_all(self):
        s = self.start_sluice(routed_config(self.mock.port, "model-A"), workers=3)
        s.write_config(routed_config(self.mock.port, "model-B"))
        s.reload()
        self.assertTrue(self.wait_for_model("model-B"))
        # Fresh connections land on any worker; every one must answer with the new config.
        models = {self.upstream_model() for _ in range(20)}
        self.assertEqual(models, {"model-B"}, "some worker still runs the old config")


    def test_sighup_right_after_start_is_not_fatal(self):
        # Ops (and systemd) may reload the moment sluice answers health; the
        # signal handlers must be in place before any worker serves.
        for i in range(8):
            s = harness.start_sluice(routed_config(self.mock.port, "model-A"), workers=4)
            self.addCleanup(self._stop_and_check, s)
            s.reload()
            time.sleep(0.3)
            self.assertIsNone(s.proc.poll(), "round %d: SIGHUP just after start killed sluice (exit %r)"
                              % (i, s.proc.poll()))
            s.stop(signal.SIGKILL)


class ShutdownTest(harness.SluiceTestCase):
    SLOW = [{"data": 'data: {"n":%d}\n\n' % i, "delay_ms": 300 if i else 0} for i in range(8)] + \
           [{"data": "data: [DONE]\n\n", "delay_ms": 300}]

    def start_slow_stream(self):
        """Start a ~2.5 s chat stream; returns (conn, response head, body bytes read so far)."""
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"}, "chunks": self.SLOW})
        c = RawConn(self.sluice.port, timeout=15)
        self.addCleanup(c.close)
        c.send(build_request("POST", "/v1/chat/completions", CHAT_MSG % "gpt-4.1",
                             {"Content-Type": "application/json"}, self.sluice.port))
        head = c.read_until(b"\r\n\r\n", timeout=5)
        first = c.read_until(b'data: {"n":0}', timeout=5)
        return c, head, first

    def test_sigterm_drains_slow_stream_and_exits_0(self):
        self.start_sluice()
        c, head, first = self.start_slow_stream()
        self.sluice.proc.send_signal(signal.SIGTERM)
        # sluice closes the connection once the stream is done (or exits).
        raw = first + c.read_to_close(timeout=15)
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        if b"chunked" in head.lower():
            try:
                body = harness.decode_chunked(raw)
            except ValueError:
                self.fail("stream cut during shutdown (no final chunk): %r%s" % (raw[-200:], self.diag()))
        else:
            body = raw
        want = "".join(ch["data"] for ch in self.SLOW).encode()
        self.assertEqual(body, want, "stream not delivered whole across SIGTERM" + self.diag())
        self.assertEqual(self.sluice.proc.wait(15), 0, "exit code after SIGTERM" + self.diag())
        self.assertFalse(self.mock.requests()[0]["client_gone"], "stream was cut, not drained")

    def test_sigterm_stops_accepting(self):
        self.start_sluice()
        c, _, _ = self.start_slow_stream()
        self.sluice.proc.send_signal(signal.SIGTERM)

        def refused():
            try:
                with socket.create_connection(("127.0.0.1", self.sluice.port), timeout=1) as s:
                    s.sendall(build_request("GET", "/_sluice/health", port=self.sluice.port))
                    s.settimeout(1)
                    return s.recv(100) == b""   # accepted then closed unanswered also counts
            except OSError:
                return True
        self.assertTrue(harness.wait_for(refused, 2), "still accepting 2 s after SIGTERM")
        c.read_until(b"data: [DONE]", timeout=15)
        self.assertEqual(self.sluice.proc.wait(15), 0)

    def test_idle_sigterm_exits_0_quickly(self):
        self.start_sluice()
        t0 = time.monotonic()
        self.assertEqual(self.sluice.stop(signal.SIGTERM, timeout=10), 0)
        self.assertLess(time.monotonic() - t0, 5)


class CommandLineTest(unittest.TestCase):
    def setUp(self):
        self.mock_port = harness.free_port()  # never contacted: --check must not connect anywhere

    def test_version(self):
        import subprocess
        p = subprocess.run([harness.SLUICE_BIN, "--version"], capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 0)
        self.assertRegex((p.stdout + p.stderr).decode(), r"\d+\.\d+\.\d+")

    def test_check_accepts_good_config(self):
        code, out = harness.run_check(sluice_config(self.mock_port))
        self.assertEqual(code, 0, out)

    def test_check_names_the_bad_field(self):
        cases = [
            ("protocol", sluice_config(self.mock_port).replace('"gemini", base_url', '"gemenai", base_url')),
            ("supplier", sluice_config(self.mock_port).replace('supplier = "rs"', 'supplier = "nobody"')),
            ("max_body", sluice_config(self.mock_port, limits='{ max_body = "lots" }')),
            ("listen", sluice_config(self.mock_port).replace('"127.0.0.1:@PORT@"', '"not-an-address"')),
        ]
        for field, text in cases:
            with self.subTest(field=field):
                code, out = harness.run_check(text)
                self.assertNotEqual(code, 0, "accepted a config with a bad %s" % field)
                self.assertIn(field, out, "error message does not name %s" % field)

    def test_check_rejects_lua_syntax_error(self):
        code, out = harness.run_check("return { listen = ")
        self.assertNotEqual(code, 0)
        self.assertTrue(out.strip())


if __name__ == "__main__":
    harness.main()
