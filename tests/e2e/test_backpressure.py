"""Backpressure (issue 2): a client that stops reading pauses the upstream
transfer instead of making sluice buffer the answer. The mock pushes 32 MiB
as fast as it can; while the client reads nothing, sluice's resident memory
must stay far below the size of the answer; then the client reads it all and
gets every byte, in order."""
import hashlib
import json
import os
import socket
import tempfile
import time

import harness
from harness import SluiceTestCase, rss_kib

CHUNK = 1024 * 1024
CHUNKS = 32


class BackpressureTest(SluiceTestCase):
    def test_slow_client_pauses_the_upstream(self):
        s = self.start_sluice()
        pieces = [("%07d" % i) * (CHUNK // 7) + "\n" * (CHUNK % 7) for i in range(CHUNKS)]
        expected = hashlib.sha256("".join(pieces).encode()).hexdigest()
        self.mock.enqueue([{"status": 200, "headers": {"content-type": "application/octet-stream"},
                            "chunks": [{"data": p} for p in pieces]}])
        baseline = rss_kib(s.proc.pid)

        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        body = json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "big"}]}).encode()
        sock.sendall(harness.build_request("POST", "/v1/chat/completions", body,
                                           {"content-type": "application/json"}, port=s.port))
        time.sleep(2.0)  # the client reads nothing: the upstream must be held back
        grown = rss_kib(s.proc.pid) - baseline
        self.assertLess(grown, 16 * 1024,
                        "sluice grew by %d KiB while its client read nothing (answer: 32 MiB)" % grown)

        data = bytearray()
        sock.settimeout(10)
        while True:
            b = sock.recv(1 << 20)
            if not b:
                break
            data += b
            if data.endswith(b"0\r\n\r\n"):
                break
        sock.close()
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        self.assertIn(b"200", head.split(b"\r\n")[0])
        got = harness.decode_chunked(rest)
        self.assertEqual(len(got), CHUNK * CHUNKS)
        self.assertEqual(hashlib.sha256(got).hexdigest(), expected)


    def test_a_slow_reader_is_not_an_idle_upstream(self):
        # The client stops reading for longer than the idle timeout while the
        # upstream has already sent everything: the transfer is paused for the
        # client's sake, so the stream completes and is recorded COMPLETE.
        db = os.path.join(tempfile.mkdtemp(), "history.db")
        s = self.start_sluice(timeouts="{ connect = 5, first_byte = 10, idle = 1, total = 60 }",
                              extra='history = { path = "%s" },\n' % db)
        self.mock.enqueue([{"status": 200, "headers": {"content-type": "application/octet-stream"},
                            "chunks": [{"data": "x" * CHUNK} for _ in range(8)]}])
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        body = json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "big"}]}).encode()
        sock.sendall(harness.build_request("POST", "/v1/chat/completions", body,
                                           {"content-type": "application/json", "x-request-id": "slow-reader"},
                                           port=s.port))
        time.sleep(2.5)  # longer than idle = 1
        data = bytearray()
        sock.settimeout(10)
        while not data.endswith(b"0\r\n\r\n"):
            b = sock.recv(1 << 20)
            if not b:
                break
            data += b
        sock.close()
        got = harness.decode_chunked(bytes(data).partition(b"\r\n\r\n")[2])
        self.assertEqual(len(got), 8 * CHUNK)
        rec = harness.request(s.port, "GET", "/_sluice/requests/slow-reader").json()
        self.assertEqual(rec["reason"], "COMPLETE", rec)


if __name__ == "__main__":
    harness.main()
