#!/usr/bin/env python3
"""mock_upstream — a scripted HTTP/1.1 upstream over real sockets.

The end-to-end tests point sluice's suppliers at this server and script, per
request, exactly what the "LLM vendor" does: which status and headers it
sends, whether the body is one Content-Length blob or a chunked stream whose
chunks arrive with delays, and how the exchange ends (cleanly, by closing the
TCP connection early, by a reset, after a stall, or by dropping the request
unanswered). It records every request it receives, byte-exact, and notices
when its peer (sluice) goes away while a response is still being sent, which
is how the tests prove that a client abort reaches the upstream.

It is hand-rolled on asyncio.Protocol rather than http.server so the tests
own every byte and every timing, and so a peer close is seen the moment it
happens, even while a scene is sleeping between chunks.

Control API (never scripted, all under /_mock/):
  POST /_mock/enqueue   body: a JSON scene or list of scenes, appended to a FIFO
  GET  /_mock/requests  every scripted request received, in order
  GET  /_mock/stats     {connections_opened, connections_closed, open}
  GET  /_mock/queue     {"pending": n} scenes not yet consumed
  POST /_mock/reset     clear queue, requests and stats

A scene (all keys optional): path (prefix the request path must start with),
status, headers, body (str, sent with Content-Length) or chunks ([{data or
data_b64, delay_ms}], sent chunked, each flushed), raw (str written verbatim instead of
a response), delay_ms (before the status line), stall_ms (after the body),
close_after, reset, drop_request, repeat, require (a validating vendor:
{"contains": [str...], "status", "body"} is answered instead of the scene
when the request body lacks one of the strings). Without a Content-Type header a
body defaults to application/json and chunks to text/event-stream.

Connections used only for the control API are not counted in the stats, so
the stats describe the connections sluice opened. Nothing is printed except
errors (to stderr).

Usage: python3 tests/mock_upstream.py --port 0 --port-file FILE
"""

import argparse
import asyncio
import base64
import json
import os
import socket
import struct
import sys
import time
import traceback

MAX_HEAD = 1 << 20          # request line + headers
MAX_BODY = 64 << 20         # request body


class PeerGone(Exception):
    """The peer closed or reset the connection while we still had work to do."""


class BadRequest(Exception):
    """The bytes received are not a request this server understands."""


class State:
    """Everything the control API shows or resets; one per process."""

    def __init__(self):
        self.generation = 0
        self.next_conn_id = 1
        self.reset()

    def reset(self):
        # Connections still open from before a reset must not be counted
        # as closed afterwards, hence the generation number.
        self.generation += 1
        self.queue = []
        self.requests = []
        self.opened = 0
        self.closed = 0

    def enqueue(self, scenes):
        for scene in scenes:
            if not isinstance(scene, dict):
                raise ValueError("a scene must be a JSON object")
            repeat = int(scene.get("repeat", 1))
            self.queue.append({"scene": scene, "left": max(repeat, 1)})

    def take_scene(self, path):
        for i, entry in enumerate(self.queue):
            prefix = entry["scene"].get("path")
            if prefix is None or path.startswith(prefix):
                entry["left"] -= 1
                if entry["left"] <= 0:
                    del self.queue[i]
                return entry["scene"]
        return None

    def stats(self):
        return {
            "connections_opened": self.opened,
            "connections_closed": self.closed,
            "open": self.opened - self.closed,
        }


class Connection(asyncio.Protocol):
    """One accepted TCP connection: reads requests, answers them in order."""

    def __init__(self, state):
        self.state = state
        self.conn_id = state.next_conn_id
        state.next_conn_id += 1
        self.buf = bytearray()
        self.peer_eof = False
        self.lost = False
        self.kind = None            # None until the first request: "control" or "scripted"
        self.counted_gen = None     # generation in which this connection was counted as opened
        self.transport = None

    # -- asyncio.Protocol callbacks -------------------------------------

    def connection_made(self, transport):
        loop = asyncio.get_running_loop()
        self.transport = transport
        self.wakeup = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.gone = loop.create_future()
        self.task = loop.create_task(self.run())

    def data_received(self, data):
        self.buf += data
        self.wakeup.set()

    def eof_received(self):
        self.peer_eof = True
        self.mark_gone()
        return True  # keep the transport; run() decides when to close it

    def connection_lost(self, exc):
        self.lost = True
        self.mark_gone()
        self.writable.set()
        if self.kind is None:
            self.count_open()       # a connection that never sent a request
        if self.counted_gen == self.state.generation:
            self.state.closed += 1

    def pause_writing(self):
        self.writable.clear()

    def resume_writing(self):
        self.writable.set()

    # -- helpers --------------------------------------------------------

    def mark_gone(self):
        self.wakeup.set()
        if not self.gone.done():
            self.gone.set_result(True)

    def count_open(self):
        if self.counted_gen is None:
            self.counted_gen = self.state.generation
            self.state.opened += 1

    async def wait_input(self):
        self.wakeup.clear()
        await self.wakeup.wait()

    async def read_until(self, marker, limit):
        """Bytes up to and including marker; None on a clean EOF before any byte."""
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                end = i + len(marker)
                data = bytes(self.buf[:end])
                del self.buf[:end]
                return data
            if len(self.buf) > limit:
                raise BadRequest("head too large")
            if self.peer_eof or self.lost:
                if self.buf:
                    raise BadRequest("connection closed inside a request")
                return None
            await self.wait_input()

    async def read_exact(self, n):
        while len(self.buf) < n:
            if self.peer_eof or self.lost:
                raise BadRequest("connection closed inside a request body")
            await self.wait_input()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def pause(self, ms):
        """Sleep ms milliseconds, but fail at once if the peer leaves meanwhile."""
        if ms <= 0:
            return
        done, _ = await asyncio.wait([self.gone], timeout=ms / 1000.0)
        if done:
            raise PeerGone()

    async def send(self, data):
        if self.peer_eof or self.lost:
            raise PeerGone()
        if data:
            self.transport.write(data)
        await self.writable.wait()
        if self.lost:
            raise PeerGone()

    async def flushed(self):
        """Wait until asyncio's own buffer is in the kernel."""
        while self.transport.get_write_buffer_size() > 0 and not self.lost:
            await asyncio.sleep(0.005)

    # -- request reading ------------------------------------------------

    async def read_request(self):
        head = await self.read_until(b"\r\n\r\n", MAX_HEAD)
        if head is None:
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest("bad request line %r" % lines[0])
        method, target, version = parts
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise BadRequest("bad header line %r" % line)
            headers.append([name, value.strip()])
        hmap = {n.lower(): v for n, v in headers}
        if hmap.get("expect", "").lower() == "100-continue":
            # Real vendors answer this; curl otherwise waits a second before the body.
            await self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in hmap.get("transfer-encoding", "").lower():
            body = await self.read_chunked()
        else:
            try:
                length = int(hmap.get("content-length", "0"))
            except ValueError:
                raise BadRequest("bad content-length")
            if length < 0 or length > MAX_BODY:
                raise BadRequest("bad content-length")
            body = await self.read_exact(length)
        return {
            "method": method,
            "target": target,
            "version": version,
            "headers": headers,
            "hmap": hmap,
            "body": body,
        }

    async def read_chunked(self):
        body = bytearray()
        while True:
            line = await self.read_until(b"\r\n", 4096)
            if line is None:
                raise BadRequest("connection closed inside a chunked body")
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BadRequest("bad chunk size %r" % line)
            if size == 0:
                # Trailers (ignored) up to the empty line.
                while True:
                    trailer = await self.read_until(b"\r\n", MAX_HEAD)
                    if trailer is None or trailer == b"\r\n":
                        return bytes(body)
            if len(body) + size > MAX_BODY:
                raise BadRequest("chunked body too large")
            body += await self.read_exact(size)
            if await self.read_exact(2) != b"\r\n":
                raise BadRequest("chunk not followed by CRLF")

    # -- the connection loop --------------------------------------------

    async def run(self):
        try:
            while True:
                try:
                    req = await self.read_request()
                except BadRequest as e:
                    print("mock_upstream: conn %d: %s" % (self.conn_id, e), file=sys.stderr)
                    if not self.lost and not self.peer_eof:
                        await self.send_simple(400, {"error": str(e)}, close=True)
                    break
                if req is None:
                    break
                wants_close = req["hmap"].get("connection", "").lower() == "close" or \
                    req["version"] == "HTTP/1.0"
                if req["target"].startswith("/_mock/"):
                    if self.kind is None:
                        self.kind = "control"
                    await self.control(req, wants_close)
                    keep = not wants_close
                else:
                    self.kind = "scripted"
                    self.count_open()
                    keep = await self.scripted(req, wants_close)
                if not keep:
                    break
        except PeerGone:
            pass
        except Exception:
            print("mock_upstream: conn %d crashed:\n%s" % (self.conn_id, traceback.format_exc()),
                  file=sys.stderr)
        finally:
            if not self.lost:
                self.transport.close()

    async def send_simple(self, status, obj, close=False, content_type="application/json"):
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        head = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            status, reason(status), content_type, len(body))
        if close:
            head += "Connection: close\r\n"
        await self.send(head.encode() + b"\r\n" + body)

    # -- control API ----------------------------------------------------

    async def control(self, req, wants_close):
        st = self.state
        path, method = req["target"].split("?")[0], req["method"]
        if method == "POST" and path == "/_mock/enqueue":
            try:
                scenes = json.loads(req["body"] or b"[]")
                if isinstance(scenes, dict):
                    scenes = [scenes]
                st.enqueue(scenes)
            except (ValueError, TypeError) as e:
                await self.send_simple(400, {"error": str(e)}, close=wants_close)
                return
            await self.send_simple(200, {"queued": len(st.queue)}, close=wants_close)
        elif method == "GET" and path == "/_mock/requests":
            await self.send_simple(200, st.requests, close=wants_close)
        elif method == "GET" and path == "/_mock/stats":
            await self.send_simple(200, st.stats(), close=wants_close)
        elif method == "GET" and path == "/_mock/queue":
            pending = sum(e["left"] for e in st.queue)
            await self.send_simple(200, {"pending": pending}, close=wants_close)
        elif method == "POST" and path == "/_mock/reset":
            st.reset()
            await self.send_simple(200, {"reset": True}, close=wants_close)
        else:
            await self.send_simple(404, {"error": "unknown control path " + path}, close=wants_close)

    # -- scripted responses ---------------------------------------------

    def record(self, req):
        st = self.state
        rec = {
            "seq": len(st.requests) + 1,
            "conn_id": self.conn_id,
            "method": req["method"],
            "path": req["target"],
            "headers": req["headers"],
            "time": time.monotonic(),
            "client_gone": False,
        }
        try:
            rec["body"] = req["body"].decode("utf-8")
        except UnicodeDecodeError:
            rec["body"] = base64.b64encode(req["body"]).decode("ascii")
            rec["body_base64"] = True
        st.requests.append(rec)
        return rec

    async def scripted(self, req, wants_close):
        """Serve one scripted request; returns whether the connection stays open."""
        rec = self.record(req)
        scene = self.state.take_scene(req["target"])
        if scene is None:
            await self.send_simple(200, {"mock": "default", "path": req["target"]},
                                   close=wants_close)
            return not wants_close
        refusal = self.refusal(scene, rec)
        if refusal is not None:
            scene = refusal
        try:
            return await self.play(scene, wants_close)
        except PeerGone:
            rec["client_gone"] = True
            if not self.lost:
                self.transport.abort()
            return False

    @staticmethod
    def refusal(scene, rec):
        """A scene with `require` = {"contains": [str...], "status", "body"}
        is a vendor that validates the request: when the body lacks any of the
        strings, that error answer is played instead of the scene."""
        need = scene.get("require")
        if not need:
            return None
        body = rec.get("body", "")
        if all(c in body for c in need.get("contains", [])):
            return None
        return {"status": need.get("status", 400), "headers": {"Content-Type": "application/json"},
                "body": need.get("body", "")}

    async def play(self, scene, wants_close):
        await self.pause(int(scene.get("delay_ms", 0)))
        if scene.get("drop_request"):
            self.transport.close()
            return False
        if "raw" in scene:
            await self.send(scene["raw"].encode("utf-8"))
        else:
            chunks = scene.get("chunks")
            await self.send(self.head(scene, chunks, wants_close))
            if chunks is not None:
                for chunk in chunks:
                    await self.pause(int(chunk.get("delay_ms", 0)))
                    if "data_b64" in chunk:
                        data = base64.b64decode(chunk["data_b64"])
                    else:
                        data = chunk.get("data", "").encode("utf-8")
                    if data:   # an empty chunk would end the chunked body
                        await self.send(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                await self.send(scene.get("body", "").encode("utf-8"))
        await self.pause(int(scene.get("stall_ms", 0)))
        if scene.get("reset"):
            await self.flushed()
            await self.pause(30)   # let loopback deliver what was sent before the RST
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            return False
        if scene.get("close_after"):
            self.transport.close()
            return False
        if "raw" not in scene and scene.get("chunks") is not None:
            await self.send(b"0\r\n\r\n")
        return not wants_close and not self.says_close(scene)

    @staticmethod
    def says_close(scene):
        for name, value in (scene.get("headers") or {}).items():
            if name.lower() == "connection" and value.lower() == "close":
                return True
        return False

    @staticmethod
    def head(scene, chunks, wants_close):
        status = int(scene.get("status", 200))
        headers = dict(scene.get("headers") or {})
        lower = {k.lower() for k in headers}
        if "content-type" not in lower:
            headers["Content-Type"] = "text/event-stream" if chunks is not None else "application/json"
        if chunks is not None:
            if "transfer-encoding" not in lower and "content-length" not in lower:
                headers["Transfer-Encoding"] = "chunked"
        elif "content-length" not in lower:
            headers["Content-Length"] = str(len(scene.get("body", "").encode("utf-8")))
        if wants_close and "connection" not in lower:
            headers["Connection"] = "close"
        out = "HTTP/1.1 %d %s\r\n" % (status, scene.get("reason", reason(status)))
        for name, value in headers.items():
            out += "%s: %s\r\n" % (name, value)
        return (out + "\r\n").encode("utf-8")


REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 413: "Payload Too Large",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout", 529: "Overloaded"}


def reason(status):
    return REASONS.get(status, "Status")


async def main_async(args):
    state = State()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(state), args.host, args.port,
                                      reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)  # readers never see a half-written file
    async with server:
        await server.serve_forever()


def main():
    ap = argparse.ArgumentParser(description="scripted mock upstream for sluice's e2e tests")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    args = ap.parse_args()
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
