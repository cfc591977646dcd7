"""test_requests_stream — GET /_sluice/requests/stream, the live feed (issue 14).

An SSE stream of the requests that finish after it opened: each arrives as
`event: record` with the listing item's JSON and `id:` its place in the
history, so a client reconnecting with Last-Event-ID gets what it missed and
nothing twice. It sits behind the admin token like the rest of /_sluice/,
and a stopping sluice ends it rather than waiting for it.
"""

import json
import os
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ADMIN_TOKEN = "feed-admin-token-3141"
CHAT_JSON = json.dumps({
    "id": "chatcmpl-f", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})


def sse_events(text):
    """Complete events in text as dicts of their fields (comments skipped)."""
    out = []
    for block in text.split("\n\n"):
        ev = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            k, _, v = line.partition(": ")
            ev[k] = v
        if ev:
            out.append(ev)
    return out


class Feed:
    """A raw connection reading the chunked SSE feed."""

    def __init__(self, port, last_event_id=None, token=ADMIN_TOKEN):
        self.conn = harness.RawConn(port)
        extra = "Last-Event-ID: %s\r\n" % last_event_id if last_event_id else ""
        self.conn.send(("GET /_sluice/requests/stream HTTP/1.1\r\nHost: x\r\n"
                        "Authorization: Bearer %s\r\n%s\r\n" % (token, extra)).encode())
        head = self.conn.read_until(b"\r\n\r\n").decode("latin-1")
        self.status = int(head.split(" ")[1])
        self.head = head
        self.text = ""

    def read_events(self, n, timeout=10.0):
        """Waits (up to timeout, a deadline) until n record events have arrived."""
        import time
        deadline = time.monotonic() + timeout
        while len([e for e in sse_events(self.text) if e.get("event") == "record"]) < n:
            size = int(self.conn.read_until(b"\r\n", deadline - time.monotonic()).split(b";")[0], 16)
            if size == 0:
                raise EOFError("feed ended; got %r" % self.text)
            self.text += self.conn._read_n(size + 2, deadline - time.monotonic())[:-2].decode()
        return [e for e in sse_events(self.text) if e.get("event") == "record"]

    def close(self):
        self.conn.close()


class StreamTest(harness.SluiceTestCase):
    def start(self):
        d = tempfile.mkdtemp(prefix="sluice-feed-")
        self.addCleanup(shutil.rmtree, d, True)
        extra = ('  retry = { attempts = 1 },\n  history = { path = "%s/h.db" },\n'
                 '  admin = { token = "%s" },\n' % (d, ADMIN_TOKEN))
        # /_sluice/health needs the token too: start without the harness's wait
        s = harness.Sluice(harness.sluice_config(self.mock.port, extra=extra), wait=False)
        self.addCleanup(self._stop_and_check, s)
        self.sluice = s

        def up():
            try:
                return harness.request(s.port, "GET", "/_sluice/health",
                                       headers={"Authorization": "Bearer " + ADMIN_TOKEN}).status == 200
            except OSError:
                return s.proc.poll() is not None
        self.assertTrue(harness.wait_for(up, timeout=10), "sluice did not start" + self.diag())
        self.assertIsNone(s.proc.poll(), "sluice exited" + self.diag())
        return s

    def chat(self, rid):
        r = self.post("/v1/chat/completions", {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}]},
                      headers={"x-request-id": rid})
        self.assertEqual(r.status, 200, self.diag())

    def test_finished_requests_arrive_in_order_and_a_reconnect_resumes(self):
        self.start()
        self.mock.enqueue({"status": 200, "headers": {"Content-Type": "application/json"},
                           "body": CHAT_JSON, "repeat": 5})
        self.chat("before-the-feed")  # already stored: not sent
        feed = Feed(self.sluice.port)
        self.addCleanup(feed.close)
        self.assertEqual(feed.status, 200, feed.head)
        self.assertIn("text/event-stream", feed.head.lower())
        self.chat("live-1")
        self.chat("live-2")
        events = feed.read_events(2)
        recs = [json.loads(e["data"]) for e in events]
        self.assertEqual([r["id"] for r in recs], ["live-1", "live-2"])
        self.assertEqual(recs[0]["status"], 200)
        self.assertEqual(recs[0]["usage"]["input_tokens"], 5)
        self.assertLess(int(events[0]["id"]), int(events[1]["id"]))
        feed.close()

        # gone while live-3 finished: a reconnect from the last id gets it, and only it
        self.chat("live-3")
        again = Feed(self.sluice.port, last_event_id=events[1]["id"])
        self.addCleanup(again.close)
        self.chat("live-4")
        ids = [json.loads(e["data"])["id"] for e in again.read_events(2)]
        self.assertEqual(ids, ["live-3", "live-4"])

    def test_the_feed_needs_the_admin_token(self):
        self.start()
        feed = Feed(self.sluice.port, token="wrong-token-000000")
        self.addCleanup(feed.close)
        self.assertEqual(feed.status, 401)

    def test_a_stopping_sluice_ends_the_feed(self):
        s = self.start()
        feed = Feed(self.sluice.port)
        self.addCleanup(feed.close)
        self.assertEqual(feed.status, 200)
        s.proc.send_signal(signal.SIGTERM)
        rest = feed.conn.read_to_close(timeout=20)
        self.assertTrue(rest.endswith(b"0\r\n\r\n"), "the feed ends cleanly: %r" % rest[-40:])
        self.assertEqual(s.proc.wait(timeout=20), 0, self.diag())


if __name__ == "__main__":
    harness.main()
