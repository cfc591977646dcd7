"""harness — what every end-to-end test needs to drive real processes.

The e2e tests start the built sluice binary, the scripted mock upstream
(tests/mock_upstream.py) and, when needed, a real redis-server, all on free
loopback ports, and talk to them over real sockets. This module owns starting
and stopping those processes (always stopped, even when a test fails: each
start registers its stop with atexit, and SluiceTestCase also stops them in
tearDown), request helpers on http.client and on raw sockets (for malformed
input and for reading a stream partially then hanging up), an SSE parser, a
standard config builder and the runner that prints `N passed, M failed`.

Everything listens on and connects to 127.0.0.1 only.
"""

import atexit
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HOST = "127.0.0.1"
SOURCE_DIR = os.environ.get("SLUICE_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
SLUICE_BIN = os.environ.get("SLUICE_BIN") or os.path.join(SOURCE_DIR, "build", "sluice")
MOCK_SCRIPT = os.path.join(SOURCE_DIR, "tests", "mock_upstream.py")

_live = []  # every process handle still running, stopped at exit whatever happens


def _stop_all():
    for thing in list(_live):
        try:
            thing.stop()
        except Exception:
            pass


atexit.register(_stop_all)


def free_port():
    """A TCP port nobody listens on right now (the usual small race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port):
    """True if something accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def end_process(proc, timeout, sig=signal.SIGTERM):
    """Signal proc (if it still runs) and wait for it; SIGKILL after timeout seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_kib(pid):
    """A process's resident memory in KiB (VmRSS), 0 if /proc does not say."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_for(predicate, timeout=10.0, interval=0.05):
    """Poll predicate() until it returns a truthy value or timeout; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------
# HTTP helpers

class Response:
    """A whole HTTP response: status, headers (list of (name, value)), body bytes."""

    def __init__(self, status, headers, body, reason=""):
        self.status = status
        self.headers = headers
        self.body = body
        self.reason = reason

    def header(self, name, default=None):
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return default

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:300])


def request(port, method, path, body=None, headers=None, timeout=30.0):
    """One request on a fresh connection; body may be bytes, str or a JSON-able object."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        return Client._do(conn, method, path, body, headers)
    finally:
        conn.close()


class Client:
    """A persistent (keep-alive) client connection, for reuse tests."""

    def __init__(self, port, timeout=30.0):
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)

    def request(self, method, path, body=None, headers=None):
        return Client._do(self.conn, method, path, body, headers)

    def local_port(self):
        return self.conn.sock.getsockname()[1] if self.conn.sock else None

    def close(self):
        self.conn.close()

    @staticmethod
    def _do(conn, method, path, body, headers):
        hdrs = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode("utf-8")
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.getheaders(), data, resp.reason)


def build_request(method, path, body=b"", headers=None, port=None):
    """The bytes of an HTTP/1.1 request, for raw-socket tests."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    hdrs = [("Host", "%s:%s" % (HOST, port or 80))]
    hdrs += list((headers or {}).items())
    if body or method in ("POST", "PUT"):
        hdrs.append(("Content-Length", str(len(body))))
    head = "%s %s HTTP/1.1\r\n" % (method, path)
    head += "".join("%s: %s\r\n" % (n, v) for n, v in hdrs)
    return head.encode("latin-1") + b"\r\n" + body


class RawConn:
    """A raw TCP connection to sluice: send any bytes, read with deadlines."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""
        self.eof = False
        self.was_reset = False   # the peer ended with RST rather than FIN

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            self.was_reset = True
            data = b""
        if not data:
            self.eof = True
        self.buf += data

    def read_until(self, marker, timeout=10.0):
        """Bytes up to and including marker (consumed from the buffer)."""
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            if self.eof:
                raise EOFError("closed before %r; got %r" % (marker, self.buf[:500]))
            self._fill(deadline)
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_to_close(self, timeout=10.0):
        """Everything until the peer closes; raises socket.timeout if it never does."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._fill(deadline)
        out, self.buf = self.buf, b""
        return out

    def read_response(self, timeout=10.0):
        """One complete HTTP response (Content-Length or chunked) as a Response."""
        head = self.read_until(b"\r\n\r\n", timeout)
        lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = []
        for line in lines[1:]:
            n, _, v = line.partition(":")
            headers.append((n.strip(), v.strip()))
        resp = Response(status, headers, b"")
        if "chunked" in (resp.header("transfer-encoding") or "").lower():
            body = b""
            while True:
                size = int(self.read_until(b"\r\n", timeout).split(b";")[0], 16)
                if size == 0:
                    self.read_until(b"\r\n", timeout)
                    break
                body += self._read_n(size + 2, timeout)[:-2]
            resp.body = body
        elif resp.header("content-length") is not None:
            resp.body = self._read_n(int(resp.header("content-length")), timeout)
        else:
            resp.body = self.read_to_close(timeout)
        return resp

    def _read_n(self, n, timeout):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            if self.eof:
                raise EOFError("closed after %d of %d bytes" % (len(self.buf), n))
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def is_closed_by_peer(self, timeout=3.0):
        """True if the peer closes (EOF or reset) within timeout with nothing more to read."""
        deadline = time.monotonic() + timeout
        try:
            while not self.eof:
                self._fill(deadline)
        except socket.timeout:
            return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def decode_chunked(data):
    """Undo Transfer-Encoding: chunked on a complete byte string."""
    parts, i = [], 0  # joined once: `bytes +=` per chunk is quadratic on a 32 MiB body
    while True:
        j = data.index(b"\r\n", i)
        size = int(data[i:j].split(b";")[0], 16)
        if size == 0:
            return b"".join(parts)
        parts.append(data[j + 2:j + 2 + size])
        i = j + 2 + size + 2


# --------------------------------------------------------------------------
# SSE

def parse_sse(data):
    """Parse an SSE byte stream into a list of {"event", "data", "id"} dicts.

    Accepts LF, CRLF and CR line endings, joins multi-line data with "\n",
    skips comment lines, and keeps a record only if it had a data or event
    field. A trailing record without its blank line is dropped, like a real
    client would.
    """
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    data = data.replace("\r\n", "\n").replace("\r", "\n")
    events = []
    cur = {"event": None, "data": [], "id": None}
    for line in data.split("\n")[:-1]:  # the last piece is an unterminated line
        if line == "":
            if cur["data"] or cur["event"] is not None:
                events.append({"event": cur["event"], "data": "\n".join(cur["data"]),
                               "id": cur["id"]})
            cur = {"event": None, "data": [], "id": None}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            cur["data"].append(value)
        elif field == "event":
            cur["event"] = value
        elif field == "id":
            cur["id"] = value
    return events


def sse_chunks(text, parts=None, delay_ms=0):
    """Split an SSE body into mock chunks: one per record, or `parts` equal byte
    slices (which may cut records, lines and even UTF-8 sequences in two)."""
    if parts:
        raw = text.encode("utf-8")
        step = max(1, -(-len(raw) // parts))
        return [{"data_b64": base64.b64encode(raw[i:i + step]).decode("ascii"), "delay_ms": delay_ms}
                for i in range(0, len(raw), step)]
    pieces = [p + "\n\n" for p in text.split("\n\n") if p]
    return [{"data": p, "delay_ms": delay_ms} for p in pieces]


def sse_record(event, data):
    """One SSE record: an `event:` line unless event is None (data-only
    protocols), then `data:` (a str as it is, anything else as JSON)."""
    head = "event: %s\n" % event if event else ""
    return head + "data: " + (data if isinstance(data, str) else json.dumps(data)) + "\n\n"


def chat_chunk(delta, finish=None, usage=None, id="chatcmpl-1"):
    """One OpenAI chat.completion.chunk record (model gpt-4.1, one choice)."""
    return sse_record(None, {"id": id, "object": "chat.completion.chunk", "created": 1,
                             "model": "gpt-4.1",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                             "usage": usage})


# --------------------------------------------------------------------------
# the mock upstream

class Mock:
    """A running tests/mock_upstream.py and its control API."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sluice-mock-")
        port_file = os.path.join(self.dir, "port")
        self.stderr_path = os.path.join(self.dir, "stderr")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, MOCK_SCRIPT, "--port", "0",
                                      "--port-file", port_file],
                                     stdout=subprocess.DEVNULL, stderr=self._stderr)
        _live.append(self)
        ok = wait_for(lambda: os.path.exists(port_file) or self.proc.poll() is not None)
        if not ok or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("mock upstream did not start: " + self.stderr())
        with open(port_file) as f:
            self.port = int(f.read())
        self.base = "http://%s:%d" % (HOST, self.port)

    def _control(self, method, path, body=None):
        r = request(self.port, method, path, body=body, headers={"Connection": "close"})
        if r.status != 200:
            raise RuntimeError("mock control %s %s -> %d %r" % (method, path, r.status, r.body))
        return r.json()

    def enqueue(self, scenes):
        if isinstance(scenes, dict):
            scenes = [scenes]
        return self._control("POST", "/_mock/enqueue", scenes)

    def requests(self):
        reqs = self._control("GET", "/_mock/requests")
        for r in reqs:
            if r.get("body_base64"):
                r["body_bytes"] = base64.b64decode(r["body"])
            else:
                r["body_bytes"] = r["body"].encode("utf-8")
        return reqs

    def stats(self):
        return self._control("GET", "/_mock/stats")

    def pending(self):
        return self._control("GET", "/_mock/queue")["pending"]

    def reset(self):
        return self._control("POST", "/_mock/reset")

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self in _live:
            _live.remove(self)
        end_process(self.proc, 5)
        self._stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_mock():
    return Mock()


def header_values(req, name):
    """All values of header `name` (case-insensitive) in a recorded mock request."""
    name = name.lower()
    return [v for n, v in req["headers"] if n.lower() == name]


# --------------------------------------------------------------------------
# sluice

def lua_str(s):
    """A Lua string literal for s."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def sluice_config(mock_port, on_request=None, limits=None, timeouts=None, suppliers_extra="",
                  routes=None, extra="", prelude=""):
    """The standard test config: one supplier per protocol, all on the mock.

    `prelude` is Lua placed before the `return` (locals for hooks). The
    text keeps the placeholders @PORT@ and @ACCESS_LOG@, which
    start_sluice fills in. Suppliers: `oa` (openai-chat, bearer), `an`
    (anthropic, passthrough auth), `rs` (openai-responses, header auth), `gm`
    (gemini, no auth) and `xo` (openai-chat, used to force a translation).
    """
    base = "http://%s:%d" % (HOST, mock_port)
    limits = limits or "{ max_body = 1024 * 1024, max_header = 64 * 1024, header_timeout = 10, keepalive_timeout = 60 }"
    timeouts = timeouts or "{ connect = 10, first_byte = 120, idle = 300, total = 3600 }"
    routes = routes or """{
    claude = { { match = "*", supplier = "an" } },
    chat   = { { match = "gpt-4.1-alias", supplier = "oa", model = "gpt-4.1" }, { match = "*", supplier = "oa" } },
    codex  = { { match = "*", supplier = "rs" } },
    gemini = { { match = "gemini-alias", supplier = "gm", model = "gemini-2.5-flash" }, { match = "*", supplier = "gm" } },
  }"""
    hook = ""
    if on_request:
        hook = "  on_request = %s,\n" % on_request
    return prelude + """
return {
  listen   = { "127.0.0.1:@PORT@" },
  workers  = 1,
  limits   = %(limits)s,
  timeouts = %(timeouts)s,
  log      = { access = "@ACCESS_LOG@" },
  suppliers = {
    oa = { protocol = "openai-chat", base_url = "%(base)s/v1", auth = { type = "bearer", token = "sk-upstream-secret-oa" }, models = { "gpt-4.1" } },
    an = { protocol = "anthropic", base_url = "%(base)s", auth = { type = "passthrough" } },
    rs = { protocol = "openai-responses", base_url = "%(base)s/v1", auth = { type = "header", name = "x-api-key", value = "sk-upstream-secret-rs" } },
    gm = { protocol = "gemini", base_url = "%(base)s", auth = { type = "none" } },
    xo = { protocol = "openai-chat", base_url = "%(base)s/v1", auth = { type = "bearer", token = "sk-upstream-secret-xo" } },
%(suppliers_extra)s  },
  routes = %(routes)s,
%(hook)s%(extra)s}
""" % {"limits": limits, "timeouts": timeouts, "base": base, "suppliers_extra": suppliers_extra,
       "routes": routes, "hook": hook, "extra": extra}


class Sluice:
    """A running sluice binary with its config, stderr log and access log in a temp dir."""

    def __init__(self, config_text, workers=1, extra_env=None, port=None, wait=True):
        if not os.path.exists(SLUICE_BIN):
            raise RuntimeError("sluice binary not found at %s (set SLUICE_BIN)" % SLUICE_BIN)
        self.dir = tempfile.mkdtemp(prefix="sluice-e2e-")
        self.port = port or free_port()
        self.config_path = os.path.join(self.dir, "sluice.lua")
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.access_log_path = os.path.join(self.dir, "access.log")
        self.write_config(config_text)
        env = dict(os.environ)
        env.update(extra_env or {})
        self._stderr = open(self.log_path, "wb")
        self.proc = subprocess.Popen([SLUICE_BIN, "-c", self.config_path, "--workers", str(workers)],
                                     stdout=self._stderr, stderr=self._stderr, env=env,
                                     cwd=SOURCE_DIR)
        _live.append(self)
        if wait and not self.wait_healthy():
            out = self.stderr()
            self.stop(signal.SIGKILL)
            raise RuntimeError("sluice did not become healthy within 10 s; stderr:\n" + out)

    def fill(self, config_text):
        return (config_text.replace("@PORT@", str(self.port))
                .replace("@ACCESS_LOG@", self.access_log_path))

    def write_config(self, config_text):
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.fill(config_text))
        os.replace(tmp, self.config_path)

    def health(self):
        try:
            return request(self.port, "GET", "/_sluice/health", timeout=2)
        except OSError:
            return None

    def wait_healthy(self, timeout=10.0):
        def ok():
            if self.proc.poll() is not None:
                return "exited"
            r = self.health()
            return r is not None and r.status == 200
        return wait_for(ok, timeout) is True

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Signal sluice and wait for it; returns the exit code (SIGKILL after timeout)."""
        if self in _live:
            _live.remove(self)
        end_process(self.proc, timeout, sig)
        if not self._stderr.closed:
            self._stderr.close()
        return self.proc.returncode

    def stderr(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def access_log(self):
        try:
            with open(self.access_log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def access_records(self):
        out = []
        for line in self.access_log().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def cleanup(self):
        """Stop (SIGTERM, then SIGKILL), remove the temp dir; returns the final stderr text."""
        self.stop(signal.SIGTERM, timeout=5)
        text = self.stderr()
        shutil.rmtree(self.dir, ignore_errors=True)
        return text


# What ASan/UBSan/LSan print; a sanitizer build must fail the test that triggered it.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "ThreadSanitizer:")


def sanitizer_report(stderr_text):
    for mark in SANITIZER_MARKS:
        i = stderr_text.find(mark)
        if i >= 0:
            return stderr_text[max(0, i - 200):i + 3000]
    return None


def start_sluice(config_text, workers=1, extra_env=None):
    return Sluice(config_text, workers=workers, extra_env=extra_env)


def run_check(config_text):
    """Run `sluice -c CONFIG --check`; returns (exit code, stderr text)."""
    d = tempfile.mkdtemp(prefix="sluice-check-")
    try:
        path = os.path.join(d, "sluice.lua")
        with open(path, "w") as f:
            f.write(config_text.replace("@PORT@", str(free_port()))
                    .replace("@ACCESS_LOG@", os.path.join(d, "access.log")))
        p = subprocess.run([SLUICE_BIN, "-c", path, "--check"], capture_output=True, timeout=30)
        return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------
# redis

class Redis:
    """A real redis-server on a free loopback port, nothing persisted."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sluice-redis-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _live.append(self)
        if not wait_for(lambda: self.command("PING") == b"+PONG\r\n" or self.proc.poll() is not None):
            self.stop()
            raise RuntimeError("redis-server did not start on port %d" % self.port)

    def command(self, *args):
        """Send one command (RESP) and return the raw reply bytes, or None if unreachable."""
        msg = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            msg += b"$%d\r\n%s\r\n" % (len(a), a)
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as s:
                s.sendall(msg)
                return s.recv(65536)
        except OSError:
            return None

    def get(self, key):
        """GET key: the string, or None (absent, or Redis unreachable)."""
        raw = self.command("GET", key)
        if raw is None or raw.startswith(b"$-1"):
            return None
        head, _, rest = raw.partition(b"\r\n")
        return rest[:int(head[1:])].decode()

    def keys(self, pattern="*"):
        raw = self.command("KEYS", pattern) or b""
        return [l.decode() for l in raw.split(b"\r\n")[2::2] if l]

    def stop(self):
        if self in _live:
            _live.remove(self)
        end_process(self.proc, 5)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_redis():
    return Redis()


# --------------------------------------------------------------------------
# nginx: a real TLS (and HTTP/2) server

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 256; }
http {
    log_format test '%(log_format)s';
    access_log %(dir)s/access.log test;
    client_body_temp_path %(dir)s/tmp;
    proxy_temp_path %(dir)s/tmp;
    fastcgi_temp_path %(dir)s/tmp;
    uwsgi_temp_path %(dir)s/tmp;
    scgi_temp_path %(dir)s/tmp;
    keepalive_timeout %(keepalive)s;
    server {
        listen 127.0.0.1:%(port)d ssl%(http2)s;
        ssl_certificate %(dir)s/cert.pem;
        ssl_certificate_key %(dir)s/key.pem;
%(server)s
    }
}
"""


class Nginx:
    """nginx on a free loopback port speaking TLS (and HTTP/2 unless http2 is
    false) with a throwaway self-signed certificate for 127.0.0.1.

    `server` is the rest of its server block (locations); `%(dir)s` in it is
    nginx's directory, where `files` ({name: text}) are written first. Each
    request is logged as `log_format` (nginx variables) in access.log."""

    def __init__(self, server, log_format="$request $status", keepalive="75s", http2=True,
                 files=None):
        self.dir = tempfile.mkdtemp(prefix="sluice-nginx-")
        os.makedirs(os.path.join(self.dir, "tmp"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", os.path.join(self.dir, "key.pem"),
                        "-out", os.path.join(self.dir, "cert.pem")],
                       check=True, capture_output=True)
        for name, text in (files or {}).items():
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF % {"dir": self.dir, "port": self.port, "log_format": log_format,
                                  "keepalive": keepalive, "http2": " http2" if http2 else "",
                                  "server": server % {"dir": self.dir}})
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _live.append(self)
        if not wait_for(lambda: port_open(self.port) or self.proc.poll() is not None,
                        timeout=10) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("nginx did not start: %s" % self.proc.stderr.read())

    def access_lines(self):
        """The access log's lines so far ([] before the first)."""
        try:
            with open(os.path.join(self.dir, "access.log")) as f:
                return f.read().splitlines()
        except OSError:
            return []

    def stop(self):
        if self in _live:
            _live.remove(self)
        end_process(self.proc, 10)
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# test case base and runner

class SluiceTestCase(unittest.TestCase):
    """Starts a fresh mock per test; stops everything it started in tearDown."""

    def setUp(self):
        self.mock = start_mock()
        self.addCleanup(self.mock.stop)
        self.sluice = None

    def start_sluice(self, config_text=None, workers=1, extra_env=None, **config_kw):
        if config_text is None:
            config_text = sluice_config(self.mock.port, **config_kw)
        s = start_sluice(config_text, workers=workers, extra_env=extra_env)
        self.addCleanup(self._stop_and_check, s)
        self.sluice = s
        return s

    def _stop_and_check(self, s):
        # Runs as a cleanup: an exception here is reported as this test's error.
        report = sanitizer_report(s.cleanup())
        if report:
            raise AssertionError("sanitizer report in sluice's stderr:\n" + report)

    def start_redis(self):
        r = start_redis()
        self.addCleanup(r.stop)
        return r

    def post(self, path, body, headers=None, port=None):
        return request(port or self.sluice.port, "POST", path, body=body, headers=headers)

    def only_request(self):
        """The single request the mock received (fails the test if not exactly one)."""
        reqs = self.mock.requests()
        self.assertEqual(len(reqs), 1, "expected exactly one upstream request, got %r"
                         % [(r["method"], r["path"]) for r in reqs])
        return reqs[0]

    def diag(self):
        """sluice's stderr, for failure messages."""
        if not self.sluice:
            return ""
        rc = self.sluice.proc.poll()
        state = "running" if rc is None else ("killed by signal %d" % -rc if rc < 0 else "exited %d" % rc)
        return "\n--- sluice (%s) stderr ---\n%s" % (state, self.sluice.stderr()[-4000:])


class _CountingResult(unittest.TextTestResult):
    pass


def main():
    """Run the calling module's tests verbosely; print `N passed, M failed`; exit non-zero on failure."""
    import __main__
    suite = unittest.defaultTestLoader.loadTestsFromModule(__main__)
    runner = unittest.TextTestRunner(verbosity=2, resultclass=_CountingResult, stream=sys.stdout)
    result = runner.run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    line = "%d passed, %d failed" % (passed, failed)
    if skipped:
        line += ", %d skipped" % skipped
    print(line)
    sys.stdout.flush()
    _stop_all()
    sys.exit(1 if failed or result.testsRun == 0 else 0)
