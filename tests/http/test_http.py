#!/usr/bin/env python3
"""The HTTP API against the real mixtrald on the demo model, through the
official openai package (an httpx transport bound to the Unix socket), curl
--unix-socket and raw sockets: chat, completion, streaming, models, errors;
the same greedy answer over HTTP, the protobuf socket, D-Bus and mixtral-run;
429 with Retry-After; a disconnect mid-stream frees the place at once; a
reader that never reads costs bounded memory; malformed HTTP gets 4xx and the
daemon goes on; API keys on the TCP listener; /metrics; 503 while loading.

    test_http.py MIXTRALD MIXTRAL MIXTRAL_RUN DEMO_MODEL_DIR
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

try:
    import openai
    from daemon import Daemon, check, failures, finish, read_response, request, setup
except ImportError as e:
    print(f"SKIP: {e} (tools/install-deps sets up .venv with the pinned openai package)")
    sys.exit(77)

mixtrald, run, model = setup(sys.argv)
HELLO = [{"role": "user", "content": "Hello there"}]


def run_text(*args):
    """mixtral-run's answer (without the newline it adds to end the line)."""
    out = subprocess.run([run, "--model", model, "--threads", "1", *args], capture_output=True, text=True,
                         check=True).stdout
    return out[:-1] if out.endswith("\n") else out


def test_answers(d):
    c = d.client()
    r = c.chat.completions.create(model="any", messages=HELLO, max_tokens=12, temperature=0)
    want = run_text("--chat", "Hello there", "--temperature", "0", "--max-tokens", "12")
    check(r.choices[0].message.content == want, f"chat {r.choices[0].message.content!r} != mixtral-run's {want!r}")
    check(r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == os.path.basename(model),
          f"chat envelope: {r}")
    check(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12 and
          r.usage.total_tokens == r.usage.prompt_tokens + 12, f"chat usage: {r.usage}")
    # The daemon's protobuf socket, through the mixtral client: the same text.
    proto = d.mixtral("--temperature", "0", "-n", "12", "Hello there")
    check(proto == want + "\n", f"protobuf socket {proto!r} != {want!r} and a newline")

    r = c.completions.create(model="any", prompt="Once upon a time", max_tokens=10, temperature=0, seed=3)
    want = run_text("--prompt", "Once upon a time", "--temperature", "0", "--max-tokens", "10")
    check(r.choices[0].text == want and r.object == "text_completion", f"completion {r.choices[0].text!r} != {want!r}")

    # Sampled, with a seed: the same seed, the same text, as mixtral-run.
    r = c.chat.completions.create(model="any", messages=HELLO, max_tokens=10, seed=42, temperature=0.9, top_p=0.9)
    want = run_text("--chat", "Hello there", "--seed", "42", "--temperature", "0.9", "--top-p", "0.9",
                    "--max-tokens", "10")
    check(r.choices[0].message.content == want, f"sampled chat {r.choices[0].message.content!r} != {want!r}")

    # A conversation, and a system prompt as messages.
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": [{"type": "text", "text": "More"}]}]
    r = c.chat.completions.create(model="any", messages=conv, max_tokens=8, temperature=0)
    with open(os.path.join(d.dir, "conv.json"), "w") as f:
        json.dump([{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else "More"}
                   for m in conv], f)
    want = run_text("--messages", os.path.join(d.dir, "conv.json"), "--temperature", "0", "--max-tokens", "8")
    check(r.choices[0].message.content == want, f"conversation {r.choices[0].message.content!r} != {want!r}")

    # Stop strings end the answer before them, as finish_reason "stop".
    full = c.completions.create(model="any", prompt="Once upon a time", max_tokens=10, temperature=0)
    text = full.choices[0].text
    cut = text[3:5]
    r = c.completions.create(model="any", prompt="Once upon a time", max_tokens=10, temperature=0, stop=[cut])
    check(r.choices[0].finish_reason == "stop" and r.choices[0].text == text[:text.index(cut)],
          f"stop {cut!r}: {r.choices[0]}")


def test_streaming(d):
    c = d.client()
    whole = c.chat.completions.create(model="any", messages=HELLO, max_tokens=16, temperature=0)
    chunks = list(c.chat.completions.create(model="any", messages=HELLO, max_tokens=16, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    check(text == whole.choices[0].message.content, f"stream {text!r} != {whole.choices[0].message.content!r}")
    check(chunks[0].choices[0].delta.role == "assistant", f"first chunk: {chunks[0]}")
    check(chunks[-2].choices[0].finish_reason == "length", f"the last choice: {chunks[-2]}")
    check(not chunks[-1].choices and chunks[-1].usage and chunks[-1].usage.completion_tokens == 16,
          f"the usage chunk: {chunks[-1]}")
    check(all(ch.usage is None for ch in chunks[:-1]), "usage before the last chunk")
    check(all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks), "chunk ids")
    # Without include_usage: no usage chunk.
    chunks = list(c.completions.create(model="any", prompt="Once upon a time", max_tokens=6, temperature=0,
                                       stream=True))
    text = "".join(ch.choices[0].text for ch in chunks)
    want = run_text("--prompt", "Once upon a time", "--temperature", "0", "--max-tokens", "6")
    check(text == want and all(ch.usage is None for ch in chunks), f"completion stream {text!r} != {want!r}")
    # The raw events: data lines, then [DONE].
    s = d.raw(request("POST", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 3, "stream": True}))
    status, headers, body = read_response(s)
    while not body.endswith(b"0\r\n\r\n"):
        b = s.recv(65536)
        if not b:
            break
        body += b
    s.close()
    check(status == 200 and headers.get("content-type") == "text/event-stream" and
          headers.get("transfer-encoding") == "chunked", f"stream headers: {status} {headers}")
    events = [l for l in body.split(b"\n") if l.startswith(b"data: ")]
    check(len(events) >= 4 and b'"role":"assistant"' in events[0] and b'"finish_reason":"length"' in events[-2] and
          events[-1] == b"data: [DONE]", f"stream body: {body[:300]}")


def test_models(d):
    c = d.client()
    models = c.models.list().data
    name = os.path.basename(model)
    check(len(models) == 1 and models[0].id == name and models[0].owned_by == "mixtrald" and
          models[0].context_length == 4096, f"models: {models}")
    check(c.models.retrieve(name).id == name, "models/ID")
    try:
        c.models.retrieve("gpt-5")
        check(False, "an unknown model was found")
    except openai.NotFoundError as e:
        check(e.body["code"] == "model_not_found", f"unknown model: {e.body}")


def expect_error(call, exc, status, code, words):
    try:
        call()
        check(False, f"no {status} for {words}")
    except exc as e:
        check(e.status_code == status and e.body.get("code") == code and words in e.body.get("message", "") and
              e.body.get("type"), f"{words}: {e.status_code} {e.body}")


def test_errors(d):
    c = d.client()
    chat = c.chat.completions.create
    expect_error(lambda: chat(model="m", messages=[], max_tokens=5), openai.BadRequestError, 400, "invalid_argument",
                 "'messages' must be a non-empty array")
    expect_error(lambda: chat(model="m", messages=HELLO, n=2), openai.BadRequestError, 400, "invalid_argument", "n = 1")
    expect_error(lambda: chat(model="m", messages=HELLO, logprobs=True), openai.BadRequestError, 400,
                 "invalid_argument", "log probabilities")
    expect_error(lambda: chat(model="m", messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]),
                 openai.BadRequestError, 400, "invalid_argument", "messages[0].role")
    expect_error(lambda: chat(model="m", messages=HELLO, extra_body={"max_tokens": "5"}), openai.BadRequestError, 400,
                 "invalid_argument", "'max_tokens' must be an integer")
    expect_error(lambda: chat(model="m", messages=HELLO, temperature=-1), openai.BadRequestError, 400,
                 "invalid_argument", "temperature")
    expect_error(lambda: chat(model="m", messages=[{"role": "user", "content": "x" * 30000}]), openai.BadRequestError,
                 400, "context_length_exceeded", "the context holds")
    expect_error(lambda: c.completions.create(model="m", prompt=[1, 2, 3]), openai.BadRequestError, 400,
                 "invalid_argument", "token ids")
    expect_error(lambda: c.completions.create(model="m", prompt="x", echo=True), openai.BadRequestError, 400,
                 "invalid_argument", "echo")
    # Unknown fields are ignored; null is absent.
    r = chat(model="m", messages=HELLO, max_tokens=2, temperature=0, extra_body={"frobnicate": [1], "stop": None},
             user="someone", presence_penalty=0)
    check(r.usage.completion_tokens == 2, "unknown fields were not ignored")
    # Bytes no client library would send.
    for body, words in [(b'{"messages": [{"role": "user", "content": "a\\u0000b"}]}', "NUL"),
                        (b'{"messages": [{"role": "user", "content": "\xff"}]}', "not valid JSON"),
                        (b'{"messages": [], "messages": []}', "not valid JSON"),
                        (b"[]", "a JSON object"), (b"", "not valid JSON")]:
        status, headers, got = read_response(d.raw(request("POST", "/v1/chat/completions", body)))
        err = json.loads(got)["error"] if status else {}
        check(status == 400 and words in err.get("message", "") and headers.get("x-should-retry") == "false",
              f"body {body!r}: {status} {got!r}")
    for method, path, status in [("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405),
                                 ("DELETE", "/v1/models", 405), ("POST", "/health", 405)]:
        st, headers, got = read_response(d.raw(request(method, path)))
        check(st == status and "error" in json.loads(got), f"{method} {path}: {st} {got!r}")
        if status == 405:
            check(headers.get("allow") in ("GET", "POST"), f"{method} {path}: Allow {headers}")
    # Too large: refused by its Content-Length, before the body is read.
    s = d.raw(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n")
    st, _, got = read_response(s)
    check(st == 413 and b"max_frame_bytes" in got, f"413: {st} {got!r}")


def test_curl(d):
    if not shutil.which("curl"):
        check(False, "curl is not installed")
        return
    base = ["curl", "-sS", "--unix-socket", d.http]
    out = subprocess.run(base + ["http://localhost/health"], capture_output=True, text=True).stdout
    check(json.loads(out).get("status") == "ok", f"curl /health: {out}")
    # curl -d sends a form's Content-Type: the body is JSON whatever it says.
    out = subprocess.run(base + ["http://localhost/v1/chat/completions", "-d",
                                 json.dumps({"messages": HELLO, "max_tokens": 12, "temperature": 0})],
                         capture_output=True, text=True).stdout
    want = run_text("--chat", "Hello there", "--temperature", "0", "--max-tokens", "12")
    check(json.loads(out)["choices"][0]["message"]["content"] == want, f"curl chat: {out}")
    out = subprocess.run(base + ["-N", "http://localhost/v1/chat/completions", "-d",
                                 json.dumps({"messages": HELLO, "max_tokens": 12, "temperature": 0, "stream": True})],
                         capture_output=True, text=True).stdout
    events = [json.loads(l[6:]) for l in out.splitlines() if l.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    check(text == want and out.rstrip().endswith("data: [DONE]"), f"curl stream: {out}")


def test_disconnect(d):
    """A client that goes mid-stream, or while waiting for a whole answer,
    has its request ended at once (CANCELLED, not finished): the place is
    free for the next."""
    for stream in (True, False):
        cancelled = d.log_text().count("CANCELLED")
        body = {"messages": HELLO, "ignore_eos": True, "stream": stream}  # up to the whole context
        s = d.raw(request("POST", "/v1/chat/completions", body))
        if stream:
            got = b""
            while got.count(b"data: ") < 5:
                got += s.recv(4096)
        else:
            time.sleep(0.1)
        check(d.status()["running"] == 1, "the request was not running")
        s.close()
        check(d.wait_idle(2), f"the request of a client that left (stream {stream}) still runs")
        check(d.log_text().count("CANCELLED") == cancelled + 1, f"the request of a client that left (stream "
              f"{stream}) was not cancelled")


def test_busy(d):
    """max_batch 1, max_queue 1: with one request running and one queued, a
    third is told 429 with Retry-After (the places count what was admitted,
    whatever the engine did meanwhile); once they go, a new one is served."""
    body = {"messages": HELLO, "ignore_eos": True}  # the whole context: long enough
    held = [d.raw(request("POST", "/v1/chat/completions", body)) for _ in range(2)]
    end = time.monotonic() + 5
    while time.monotonic() < end and d.status().get("running", 0) + d.status().get("queued", 0) < 2:
        time.sleep(0.02)
    try:
        d.client().chat.completions.create(model="m", messages=HELLO, max_tokens=2)
        check(False, "no 429 with the queue full")
    except openai.RateLimitError as e:
        check(e.body["code"] == "busy" and e.response.headers.get("retry-after") == "1", f"busy: {e.body} "
              f"{dict(e.response.headers)}")
    for s in held:
        s.close()
    check(d.wait_idle(3), "the held requests did not end")
    r = d.client().chat.completions.create(model="m", messages=HELLO, max_tokens=2)
    check(r.usage.completion_tokens == 2, "not served after the queue emptied")


def test_slow_reader(d):
    """A client that never reads its stream: dropped once max_output_bytes
    (64K here) is queued for it, its request cancelled, the memory bounded."""
    before = d.rss_kib()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(d.http)
    s.sendall(request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 4000, "ignore_eos": True,
                                                  "stream": True}))
    end = time.monotonic() + 60
    while time.monotonic() < end and "does not read its output" not in d.log_text():
        time.sleep(0.1)
    check("does not read its output" in d.log_text(), "a client that does not read was not dropped")
    check(d.wait_idle(3), "the request of a client that does not read still runs")
    grew = d.rss_kib() - before
    check(grew < 16 * 1024, f"RSS grew by {grew} KiB for a client that does not read")
    s.close()
    check(d.client().models.list().data, "not serving after the slow reader")


MALFORMED = {
    "bad Content-Length": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", 400),
    "negative Content-Length": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}", 400),
    "two Content-Lengths": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                            b"Content-Length: 3\r\n\r\n{}", 400),
    "Content-Length and chunked": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400),
    "a huge header": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n", 431),
    "many headers": (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) +
                     b"\r\n", 431),
    "chunked garbage": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"zz\r\nhello\r\n0\r\n\r\n", 400),
    "a huge chunk": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"ffffffffffffffffffff\r\nhello\r\n", 413),
    "chunks past max_frame_bytes": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
                                    (b"80000\r\n" + b"a" * 0x80000 + b"\r\n") * 3 + b"0\r\n\r\n", 413),
    "an unknown transfer coding": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}",
                                   400),
    "no Host": (b"GET /health HTTP/1.1\r\n\r\n", 400),
    "HTTP/2's preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    "a request line of garbage": (b"HELLO\r\n\r\n", None),
}


def test_malformed(d):
    for name, (data, want) in MALFORMED.items():
        s = d.raw(data)
        try:
            status, _, _ = read_response(s)
        except (ConnectionResetError, socket.timeout) as e:
            status = str(e)
        s.close()
        # Garbage that is not HTTP at all: the connection just closes.
        check(status == want, f"{name}: {status}, expected {want}")
        check(d.client().models.list().data, f"not serving after {name}")
    # A body that stops halfway, on a connection closed meanwhile.
    s = d.raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"prompt\"")
    s.close()
    check(d.client().models.list().data, "not serving after a truncated body")


def test_keys(d):
    """On the TCP listener an API key names the user: 401 without one (or
    with a wrong or revoked one), served with one."""
    key = d.mixtral("key", "new", "tests").strip()
    check(key.startswith("mxk-") and len(key) == 65, f"key {key!r}")
    keys = json.loads(d.mixtral("--json", "key", "list"))["keys"]
    check(len(keys) == 1 and keys[0]["name"] == "tests" and keys[0]["uid"] == os.getuid() and
          not keys[0].get("secret"), f"key list: {keys}")
    stored = open(os.path.join(d.state, "keys")).read()
    check(key not in stored and key.split("-")[2] not in stored, "the key itself is in the state directory")
    check(oct(os.stat(os.path.join(d.state, "keys")).st_mode & 0o777) == "0o600", "the keys file's mode")
    r = d.tcp_client(key).chat.completions.create(model="m", messages=HELLO, max_tokens=4, temperature=0)
    check(r.usage.completion_tokens == 4, "no answer with a key")
    chunks = list(d.tcp_client(key).completions.create(model="m", prompt="Hi", max_tokens=3, stream=True))
    check(chunks[-1].choices[0].finish_reason == "length", f"TCP stream: {chunks}")
    for bad in ("mxk-000000000000-" + "0" * 48, key[:-1] + ("1" if key[-1] == "0" else "0"), "sk-proj-abc"):
        expect_error(lambda: d.tcp_client(bad).models.list(), openai.AuthenticationError, 401, "invalid_api_key",
                     "API key")
    s = socket.create_connection(("127.0.0.1", d.port))
    s.sendall(request("GET", "/v1/models"))
    status, headers, _ = read_response(s)
    check(status == 401 and headers.get("www-authenticate") == "Bearer", f"no key: {status} {headers}")
    # Root's key reaches /metrics.
    m = subprocess.run(["curl", "-s", "-H", f"Authorization: Bearer {key}", f"http://127.0.0.1:{d.port}/metrics"],
                       capture_output=True, text=True).stdout
    check("mixtrald_requests_finished_total" in m, "no /metrics with root's key")
    d.mixtral("key", "revoke", keys[0]["id"])
    expect_error(lambda: d.tcp_client(key).models.list(), openai.AuthenticationError, 401, "invalid_api_key", "API key")
    check(json.loads(d.mixtral("--json", "key", "list")).get("keys", []) == [], "a revoked key is listed")
    r = subprocess.run([CLIENT_BIN, "--socket", d.socket, "key", "revoke", keys[0]["id"]], capture_output=True,
                       text=True)
    check(r.returncode == 4 and "NOT_FOUND" in r.stderr, f"revoking twice: {r.returncode} {r.stderr}")


def test_metrics(d):
    r = subprocess.run(["curl", "-sS", "-D", "-", "--unix-socket", d.http, "http://localhost/metrics"],
                       capture_output=True, text=True).stdout
    head, body = r.split("\n\n", 1) if "\r" not in r else r.split("\r\n\r\n", 1)
    check("text/plain; version=0.0.4" in head, f"metrics content type: {head}")
    series = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    check(series.get('mixtrald_requests_finished_total{reason="length"}', 0) >= 5, "finished requests not counted")
    check(series.get('mixtrald_requests_refused_total{code="too_long"}', 0) >= 1, "refusals not counted")
    check(series.get('mixtrald_state{state="serving"}') == 1, "state")
    check(series.get("mixtrald_completion_tokens_total", 0) > 50, "tokens")
    check(series.get("mixtrald_time_to_first_token_seconds_count", 0) >= 5 and
          series.get('mixtrald_time_to_first_token_seconds_bucket{le="+Inf"}') ==
          series.get("mixtrald_time_to_first_token_seconds_count"), "the TTFT histogram")
    check(series.get('mixtrald_http_responses_total{code="400"}', 0) >= 5, "HTTP statuses not counted")
    check('mixtrald_connections{transport="http"}' in series, "connections")


def test_loading(binary):
    """503 with Retry-After while the model loads, then served."""
    d = Daemon(binary, model, env={"MX_TEST_LOAD_SECONDS": "3"})
    try:
        for _ in range(100):
            if os.path.exists(d.http):
                break
            time.sleep(0.05)
        st, headers, body = read_response(d.raw(request("GET", "/health")))
        check(st == 503 and json.loads(body)["status"] == "loading" and headers.get("retry-after") == "5",
              f"/health while loading: {st} {body!r}")
        try:
            d.client().chat.completions.create(model="m", messages=HELLO, max_tokens=2)
            check(False, "a generation while loading was not 503")
        except openai.InternalServerError as e:
            check(e.status_code == 503 and e.body["code"] == "loading", f"while loading: {e.body}")
        d.ready()
        st, _, body = read_response(d.raw(request("GET", "/health")))
        check(st == 200 and json.loads(body)["status"] == "ok", f"/health once loaded: {st} {body!r}")
        check(d.stop() == 0, "the daemon did not stop cleanly")
    finally:
        d.cleanup()


def test_drain(d):
    """SIGTERM: a running stream finishes; the sockets go at once."""
    s = d.raw(request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 200, "ignore_eos": True,
                                                  "stream": True, "stream_options": {"include_usage": True}}))
    status, _, body = read_response(s)
    check(status == 200, "the stream did not start")
    d.proc.send_signal(15)
    s.settimeout(60)
    while not body.endswith(b"0\r\n\r\n"):
        b = s.recv(65536)
        if not b:
            break
        body += b
    check(b"data: [DONE]" in body and b'"completion_tokens":200' in body,
          f"the stream was cut by the drain: {body[-300:]}")
    check(d.proc.wait(60) == 0, "the daemon did not exit 0 after the drain")
    check(not os.path.exists(d.http), "the HTTP socket was left behind")


def test_dbus(binary):
    """The same greedy answer from D-Bus's Complete as from HTTP's chat."""
    if not shutil.which("dbus-daemon") or not shutil.which("busctl"):
        print("# (no dbus-daemon or busctl: D-Bus not compared)")
        return
    bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address"], stdout=subprocess.PIPE,
                           text=True)
    address = bus.stdout.readline().strip()
    d = Daemon(binary, model, env={"DBUS_SESSION_BUS_ADDRESS": address}, args=("--bus", "session"))
    try:
        d.ready()
        out = subprocess.run(["busctl", f"--address={address}", "--json=short", "call", "org.mixtrald.Mixtral1",
                              "/org/mixtrald/Mixtral1", "org.mixtrald.Mixtral1", "Complete", "sa{sv}", "Hello there",
                              "2", "max_tokens", "u", "12", "temperature", "d", "0"],
                             capture_output=True, text=True, timeout=60).stdout
        r = d.client().chat.completions.create(model="m", messages=HELLO, max_tokens=12, temperature=0)
        text = json.loads(out)["data"][0] if out else None
        check(text == r.choices[0].message.content, f"D-Bus {text!r} != HTTP {r.choices[0].message.content!r}")
    finally:
        d.cleanup()
        bus.kill()
        bus.wait()


CLIENT_BIN = sys.argv[2]


def main():
    config = "max_batch = 1\nmax_queue = 1\nmax_output_bytes = 64K\n"
    d = Daemon(mixtrald, model, config=config, tcp=True).ready()
    try:
        for t in (test_answers, test_streaming, test_models, test_errors, test_curl, test_disconnect, test_busy,
                  test_slow_reader, test_malformed, test_keys, test_metrics, test_drain):
            print(f"# {t.__name__}", flush=True)
            t(d)
        if failures:
            print(d.log_text()[-4000:], file=sys.stderr)
    finally:
        d.cleanup()
    for t in (test_loading, test_dbus):
        print(f"# {t.__name__}", flush=True)
        t(mixtrald)
    finish("http")


main()
