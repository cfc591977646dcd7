"""paced_client — the load for the paced-stream scenarios (scripts/bench).

wrk ends a run by cutting the streams it has in flight; at two seconds a
stream that is a tenth of a run's streams, whose CPU the proxy spent but
which wrk does not count. This client runs an exact number of whole
streams instead: --conns keep-alive connections, each asking for
--streams answers one after another, and it reads every answer to its last
chunk. It prints the line scripts/bench reads from wrk (post.lua's format).

usage: paced_client.py --port P --path /v1/messages --body FILE --proto anthropic|openai-chat
                       [--conns N] [--streams K]
"""

import argparse
import asyncio
import time

HEADERS = {
    "anthropic": "x-api-key: sk-ant-bench-0000000000000000\r\nanthropic-version: 2023-06-01\r\n",
    "openai-chat": "Authorization: Bearer sk-bench-0000000000000000\r\n",
}


async def one_connection(args, body, stats):
    reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%s"
            "Content-Length: %d\r\n\r\n" % (args.path, HEADERS[args.proto], len(body))).encode()
    try:
        for _ in range(args.streams):
            t0 = time.monotonic()
            writer.write(head + body)
            status = int((await reader.readuntil(b"\r\n\r\n")).split(b" ", 2)[1])
            n = 0
            while True:  # chunked body, to its last chunk
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                n += len(await reader.readexactly(size + 2)) - 2
            stats["lat"].append(time.monotonic() - t0)
            stats["bytes"] += n
            if status != 200:
                stats["err_status"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        stats["err_read"] += 1
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--body", required=True)
    ap.add_argument("--proto", required=True, choices=sorted(HEADERS))
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--streams", type=int, default=4)
    args = ap.parse_args()
    body = open(args.body, "rb").read()
    stats = {"lat": [], "bytes": 0, "err_status": 0, "err_read": 0}
    t0 = time.monotonic()
    await asyncio.gather(*(one_connection(args, body, stats) for _ in range(args.conns)))
    secs = time.monotonic() - t0
    lat = sorted(stats["lat"]) or [0.0]
    n = len(stats["lat"])
    print("BENCH requests=%d duration_us=%d bytes=%d rps=%.1f p50_us=%d p99_us=%d err_connect=0 "
          "err_read=%d err_write=0 err_timeout=0 err_status=%d"
          % (n, secs * 1e6, stats["bytes"], n / secs, lat[len(lat) // 2] * 1e6,
             lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6, stats["err_read"], stats["err_status"]))


if __name__ == "__main__":
    asyncio.run(main())
