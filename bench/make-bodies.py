#!/usr/bin/env python3
"""Writes the fixed upstream responses and client requests under bench/.

The benchmark serves these files from an nginx upstream, so every proxy sees
byte-identical answers. They are generated (not hand-written) so the streams
have a realistic shape — about 100 SSE records of a few words each, the usage
record last — and so changing the shape means editing one place. The output
is committed; rerun this only to change it.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

TEXT = (
    "The error comes from the retry loop in fetch_batch: when the upstream returns 429 "
    "the loop sleeps for the Retry-After value but never resets the attempt counter, so "
    "after three throttled pages every later page fails at once. Move the counter into "
    "the per-page scope, cap the sleep at thirty seconds, and log the request id that "
    "the upstream sends back so the next incident can be traced end to end. A test that "
    "feeds the client two 429 answers and then a 200 should see exactly one page of "
    "results and two sleeps; the current code raises instead. I have also noticed that "
    "the timeout passed to the session is the connect timeout only, which is why slow "
    "bodies hang for minutes; pass a tuple with a read timeout as well and the hang "
    "turns into a clean error. Here is the corrected function with both changes applied."
)


def pieces(n):
    """Split TEXT into n deltas of roughly equal word counts, keeping the spaces."""
    words = TEXT.split(" ")
    out = []
    for i in range(n):
        a = len(words) * i // n
        b = len(words) * (i + 1) // n
        chunk = " ".join(words[a:b])
        out.append(chunk if i == 0 else " " + chunk)
    return out


def dump(obj):
    return json.dumps(obj, separators=(",", ":"))


def openai_json():
    return dump({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion",
        "created": 1741570283, "model": "gpt-4.1-2025-04-14",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": TEXT, "refusal": None,
                                 "annotations": []}}],
        "usage": {"prompt_tokens": 512, "completion_tokens": 187, "total_tokens": 699,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0,
                                                "rejected_prediction_tokens": 0}},
        "service_tier": "default", "system_fingerprint": "fp_b3f1157249"}) + "\n"


def openai_sse():
    # role + 96 content + finish + usage + [DONE] = 100 records
    base = {"id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion.chunk",
            "created": 1741570283, "model": "gpt-4.1-2025-04-14",
            "service_tier": "default", "system_fingerprint": "fp_b3f1157249"}

    def chunk(choices, usage=None):
        d = dict(base)
        d["choices"] = choices
        d["usage"] = usage
        return "data: " + dump(d) + "\n\n"

    out = [chunk([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                   "logprobs": None, "finish_reason": None}])]
    for p in pieces(96):
        out.append(chunk([{"index": 0, "delta": {"content": p}, "logprobs": None,
                           "finish_reason": None}]))
    out.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    out.append(chunk([], {"prompt_tokens": 512, "completion_tokens": 187, "total_tokens": 699,
                          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0,
                                                        "audio_tokens": 0}}))
    out.append("data: [DONE]\n\n")
    return "".join(out)


def anthropic_json():
    return dump({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 512, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 187,
                  "service_tier": "standard"}}) + "\n"


def anthropic_sse():
    # message_start, content_block_start, ping, 94 deltas, block_stop, message_delta,
    # message_stop = 100 records
    def ev(obj):
        return "event: " + obj["type"] + "\ndata: " + dump(obj) + "\n\n"

    out = [ev({"type": "message_start", "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 512, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 1,
                  "service_tier": "standard"}}}),
           ev({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}),
           ev({"type": "ping"})]
    for p in pieces(94):
        out.append(ev({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": p}}))
    out.append(ev({"type": "content_block_stop", "index": 0}))
    out.append(ev({"type": "message_delta",
                   "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                   "usage": {"output_tokens": 187}}))
    out.append(ev({"type": "message_stop"}))
    return "".join(out)


SYSTEM = (
    "You are a senior Python engineer reviewing code for a data ingestion service. "
    "Answer with a short diagnosis first, then the corrected code. Keep the existing "
    "public function names. Prefer the standard library; the service already depends "
    "on requests and tenacity, nothing else. Do not add logging frameworks."
)
CODE = (
    "def fetch_batch(session, url, pages):\n"
    "    attempt = 0\n"
    "    out = []\n"
    "    for page in range(pages):\n"
    "        while True:\n"
    "            r = session.get(url, params={'page': page}, timeout=5)\n"
    "            if r.status_code == 429 and attempt < 3:\n"
    "                attempt += 1\n"
    "                time.sleep(int(r.headers.get('Retry-After', '1')))\n"
    "                continue\n"
    "            r.raise_for_status()\n"
    "            out.extend(r.json()['items'])\n"
    "            break\n"
    "    return out\n"
)
TURNS = [
    ("user", "Our nightly import started failing after the upstream added rate limits. "
             "Here is the function:\n\n" + CODE),
    ("assistant", "Which exception do you see, and on which page does it start? Also, does "
                  "the upstream send a Retry-After header on every 429?"),
    ("user", "It raises HTTPError 429 from raise_for_status, usually around page 40 of 120. "
             "Retry-After is always present, between 1 and 20 seconds. Some pages also hang "
             "for several minutes before failing. Please explain the failure and fix it."),
]

TOOL = {"name": "run_tests",
        "description": "Run the project's pytest suite, or one test file, and return the "
                       "summary line plus the output of any failing test.",
        "schema": {"type": "object",
                   "properties": {"path": {"type": "string",
                                           "description": "test file or directory"},
                                  "keyword": {"type": "string",
                                              "description": "pytest -k expression"}},
                   "required": ["path"]}}


def openai_request(stream):
    body = {"model": "gpt-4.1", "messages": [{"role": "system", "content": SYSTEM}] +
            [{"role": r, "content": c} for r, c in TURNS],
            "tools": [{"type": "function", "function": {
                "name": TOOL["name"], "description": TOOL["description"],
                "parameters": TOOL["schema"]}}],
            "max_completion_tokens": 1024, "temperature": 0.2}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return dump(body)


def anthropic_request(stream):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "system": SYSTEM,
            "messages": [{"role": r, "content": [{"type": "text", "text": c}]}
                         for r, c in TURNS],
            "tools": [{"name": TOOL["name"], "description": TOOL["description"],
                       "input_schema": TOOL["schema"]}],
            "temperature": 0.2}
    if stream:
        body["stream"] = True
    return dump(body)


def anthropic_agent_request(target=300 * 1024):
    """A coding agent deep in its loop: the same conversation, then tool
    calls and their results (test output, file contents) until the body is
    about `target` bytes — the 300 KB request of issue 13's bench."""
    messages = [{"role": r, "content": [{"type": "text", "text": c}]} for r, c in TURNS]
    i = 0
    while len(dump({"messages": messages})) < target:
        i += 1
        call_id = "toolu_%024d" % i
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": "Running the tests for page %d." % i},
            {"type": "tool_use", "id": call_id, "name": TOOL["name"],
             "input": {"path": "tests/test_fetch.py", "keyword": "page_%d" % i}}]})
        output = "".join("tests/test_fetch.py::test_page_%d_%d PASSED\n%s" % (i, k, CODE)
                         for k in range(4))
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call_id, "content": output}]})
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "system": SYSTEM,
            "messages": messages,
            "tools": [{"name": TOOL["name"], "description": TOOL["description"],
                       "input_schema": TOOL["schema"]}],
            "temperature": 0.2}
    return dump(body)


def write(rel, text):
    with open(os.path.join(HERE, rel), "w") as f:
        f.write(text)


if __name__ == "__main__":
    write("bodies/openai-chat.json", openai_json())
    write("bodies/openai-chat.sse", openai_sse())
    write("bodies/anthropic.json", anthropic_json())
    write("bodies/anthropic.sse", anthropic_sse())
    write("requests/openai-chat.json", openai_request(False))
    write("requests/openai-chat-stream.json", openai_request(True))
    write("requests/anthropic.json", anthropic_request(False))
    write("requests/anthropic-stream.json", anthropic_request(True))
    write("requests/anthropic-agent-300k.json", anthropic_agent_request())
