"""test_downstream — the client-facing HTTP/1.1 edge under clients that misbehave or just differ.

Claude Code opens with `HEAD /`; load balancers and agents pipeline health
checks; some clients pipeline without reading; a broken or hostile client
drips a body a byte at a time or parks thousands of idle keep-alive sockets.
Each test sends what such a client sends and checks what a user would
notice: every request answered, in order, on a connection that stays
usable; memory that stays bounded; a worker that keeps answering others.
"""

import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import HOST, RawConn, build_request, request, rss_kib  # noqa: E402

CHAT_MSG = '{"model":"gpt-4.1","messages":[{"role":"user","content":"%s"}]}'


def send_in_background(sock, data):
    """sendall from a thread, so the test can read (or not) meanwhile."""
    def run():
        try:
            sock.sendall(data)
        except OSError:
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def response_end(buf, off):
    """End offset of the complete response at buf[off:], or -1; and its status."""
    he = buf.find(b"\r\n\r\n", off)
    if he < 0:
        return -1, None
    head = bytes(buf[off:he]).lower()
    status = int(head.split(b" ", 2)[1])
    i = head.find(b"content-length:")
    if i >= 0:
        end = he + 4 + int(head[i + 15:].split(b"\r\n")[0])
        return (end, status) if len(buf) >= end else (-1, None)
    if b"transfer-encoding: chunked" not in head:
        raise AssertionError("response without framing: %r" % head)
    pos = he + 4
    while True:
        le = buf.find(b"\r\n", pos)
        if le < 0:
            return -1, None
        size = int(bytes(buf[pos:le]).split(b";")[0], 16)
        pos = le + 2 + size + 2
        if len(buf) < pos:
            return -1, None
        if size == 0:
            return pos, status


def statuses(sock, n, timeout):
    """Reads until n responses arrived; returns their statuses in order."""
    buf, out, off = bytearray(), [], 0
    deadline = time.monotonic() + timeout
    while len(out) < n:
        while True:  # what is complete
            end, status = response_end(buf, off)
            if end < 0:
                break
            out.append(status)
            off = end
        if off > (1 << 20):
            del buf[:off]
            off = 0
        if len(out) >= n:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            data = sock.recv(1 << 20)
        except (socket.timeout, ConnectionResetError):
            break
        if not data:
            break
        buf += data
    return out


class HeadTest(harness.SluiceTestCase):
    def test_head_then_get_on_one_keepalive_socket(self):
        s = self.start_sluice()
        c = RawConn(s.port)
        self.addCleanup(c.close)
        c.send(build_request("HEAD", "/", port=s.port))
        head = c.read_until(b"\r\n\r\n", timeout=5)
        self.assertTrue(head.startswith(b"HTTP/1.1 "), head)
        self.assertIn(b"keep-alive", head.lower())
        # The next response must start right where the head ended: a body
        # sent for HEAD would be read as the start of this one.
        c.send(build_request("GET", "/_sluice/health", port=s.port))
        r = c.read_response(timeout=5)
        self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))
        self.assertEqual(r.json()["status"], "ok")
        self.assertEqual(c.buf, b"")


class PipelineTest(harness.SluiceTestCase):
    def test_3000_pipelined_health_checks_in_one_write(self):
        # Admin answers inside the request callback; the bytes read after the
        # first request must still be parsed after the ones before them.
        s = self.start_sluice()
        want, data = [], b""
        for i in range(3000):
            path = "/nope" if i % 100 == 99 else "/_sluice/health"  # order markers
            want.append(404 if path == "/nope" else 200)
            data += build_request("GET", path, port=s.port)
        c = RawConn(s.port)
        self.addCleanup(c.close)
        send_in_background(c.sock, data)
        got = statuses(c.sock, len(want), timeout=60)
        self.assertEqual(len(got), len(want), "%d of %d answered%s" % (len(got), len(want), self.diag()))
        self.assertEqual(got, want)

    def test_pipelining_client_that_never_reads_stays_bounded(self):
        # 256 KB of pipelined requests from a client that reads none of the
        # answers: sluice must stop producing them, not buffer them all.
        # Under ASan, freed memory waits in a quarantine (256 MB by default)
        # that RSS would count as if sluice held it: keep that small.
        asan = (os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=1").lstrip(":")
        s = self.start_sluice(extra_env={"ASAN_OPTIONS": asan})
        one = build_request("GET", "/v1/models", port=s.port)
        n = 256 * 1024 // len(one)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((HOST, s.port))
        self.addCleanup(sock.close)
        before = rss_kib(s.proc.pid)
        send_in_background(sock, one * n)
        peak, last, still = before, -1, 0
        for _ in range(100):  # until RSS stops moving (about 1 s) or 10 s
            time.sleep(0.1)
            cur = rss_kib(s.proc.pid)
            peak = max(peak, cur)
            still = still + 1 if cur == last else 0
            last = cur
            if still >= 10:
                break
        self.assertLess(peak - before, 64 * 1024, "RSS grew %d KB" % (peak - before))
        # The worker still serves others meanwhile.
        r = request(s.port, "GET", "/_sluice/health", timeout=10)
        self.assertEqual(r.status, 200)
        # And once the client reads, every answer arrives, in order.
        got = statuses(sock, n, timeout=120)
        self.assertEqual(len(got), n, "%d of %d answered%s" % (len(got), n, self.diag()))
        self.assertEqual(set(got), {200})

    def test_long_pipeline_behind_a_slow_request_does_not_stall_the_worker(self):
        # 8 MB of pipelined health checks wait behind a 2 s upstream answer;
        # working through them must not hold up the worker (other clients)
        # nor take time quadratic in the pipeline's length.
        s = self.start_sluice(limits="{ max_body = 16 * 1024 * 1024, max_header = 64 * 1024, "
                                     "header_timeout = 10, keepalive_timeout = 60 }")
        self.mock.enqueue({"delay_ms": 2000, "body": '{"slow":true}'})
        health = build_request("GET", "/_sluice/health", port=s.port)
        n = 8 * 1024 * 1024 // len(health)
        slow = build_request("POST", "/v1/chat/completions", CHAT_MSG % "hi",
                             {"Content-Type": "application/json"}, s.port)
        c = RawConn(s.port)
        self.addCleanup(c.close)
        send_in_background(c.sock, slow + health * n)
        got = []
        reader = threading.Thread(target=lambda: got.extend(statuses(c.sock, n + 1, timeout=120)),
                                  daemon=True)
        reader.start()
        self.assertTrue(harness.wait_for(lambda: len(self.mock.requests()) == 1, 10))
        time.sleep(2.5)  # the slow answer is out: the pipeline is being worked through
        for _ in range(3):
            r = request(s.port, "GET", "/_sluice/health", timeout=10)
            self.assertEqual(r.status, 200, "another client waited%s" % self.diag())
        reader.join(130)
        self.assertEqual(len(got), n + 1, "%d of %d answered%s" % (len(got), n + 1, self.diag()))
        self.assertEqual(set(got), {200})


class BodyTimeoutTest(harness.SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.start_sluice(limits="{ max_body = 1024 * 1024, max_header = 64 * 1024, header_timeout = 10, "
                                 "keepalive_timeout = 60, body_timeout = 1, body_total_timeout = 3 }")

    def drip(self, gap, total_bytes=1000):
        """Sends a head announcing total_bytes, then the body a byte per `gap` seconds.
        Returns (seconds until sluice cut it, what it sent back) or (None, ...)."""
        c = RawConn(self.sluice.port)
        self.addCleanup(c.close)
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n{" % total_bytes)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:  # the whole drip would take far longer
            if c.is_closed_by_peer(gap):
                return time.monotonic() - t0, c.buf
            try:
                c.send(b" ")
            except OSError:
                return time.monotonic() - t0, c.buf
        return None, c.buf

    def check_drip_is_cut(self, gap):
        """A body dripping a byte per `gap` seconds is cut (a 408, if sluice
        says anything) and never reaches the upstream."""
        took, got = self.drip(gap)
        self.assertIsNotNone(took, "a body dripping a byte per %g s held the connection 20 s" % gap)
        if got:
            self.assertTrue(got.startswith(b"HTTP/1.1 408 "), got)
        self.assertEqual(self.mock.requests(), [])

    def test_stalled_body_is_cut(self):
        # One byte every 2 s: each gap exceeds body_timeout = 1.
        self.check_drip_is_cut(2.0)

    def test_body_that_never_finishes_is_cut_by_the_total_deadline(self):
        # One byte every 0.3 s never trips body_timeout; body_total_timeout = 3 does.
        self.check_drip_is_cut(0.3)
        # The worker is fine and a normal body is not affected.
        self.mock.enqueue({"body": '{"ok":1}'})
        r = request(self.sluice.port, "POST", "/v1/chat/completions", body=CHAT_MSG % "hi")
        self.assertEqual(r.status, 200)

    def test_bad_body_timeout_is_named(self):
        for limits, field in (("{ body_timeout = 0 }", "limits.body_timeout"),
                              ("{ body_total_timeout = 'x' }", "limits.body_total_timeout")):
            with self.subTest(limits=limits):
                code, out = harness.run_check(harness.sluice_config(self.mock.port, limits=limits))
                self.assertNotEqual(code, 0, out)
                self.assertIn(field, out)


class MaxConnectionsTest(harness.SluiceTestCase):
    def test_idle_connections_do_not_lock_out_a_new_client(self):
        s = self.start_sluice(limits="{ max_body = 1024 * 1024, max_header = 64 * 1024, header_timeout = 10, "
                                     "keepalive_timeout = 60, max_connections = 8 }")
        idle = []
        for _ in range(8):
            c = harness.Client(s.port, timeout=10)
            self.addCleanup(c.close)
            self.assertEqual(c.request("GET", "/_sluice/health").status, 200)
            idle.append(c)  # kept open, idle, keep-alive
        for _ in range(3):  # each newcomer takes an idle one's place
            r = request(s.port, "GET", "/_sluice/health", timeout=10)
            self.assertEqual(r.status, 200, "%r%s" % (r, self.diag()))

    def test_no_idle_connection_means_the_newcomer_is_refused(self):
        s = self.start_sluice(limits="{ max_body = 1024 * 1024, max_header = 64 * 1024, header_timeout = 10, "
                                     "keepalive_timeout = 60, max_connections = 2 }")
        busy = []
        for _ in range(2):  # requests under way (head not finished) are never closed for room
            c = RawConn(s.port)
            self.addCleanup(c.close)
            c.send(b"GET /_sluice/health HTTP/1.1\r\n")
            busy.append(c)
        time.sleep(0.3)
        newcomer = RawConn(s.port)
        self.addCleanup(newcomer.close)
        try:
            newcomer.send(build_request("GET", "/_sluice/health", port=s.port))
        except OSError:
            pass
        self.assertTrue(newcomer.is_closed_by_peer(5))
        self.assertEqual(newcomer.buf, b"")
        for c in busy:
            c.send(b"Host: x\r\n\r\n")
            self.assertEqual(c.read_response(timeout=5).status, 200)


if __name__ == "__main__":
    harness.main()
