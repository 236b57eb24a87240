#!/usr/bin/env python3
"""Several users of the HTTP API (root only: each child drops to its own uid
before it connects, so the daemon knows it by SO_PEERCRED alone, as on the
protobuf socket). Each uid has its own quota, spent over HTTP until 429 with
Retry-After; the per-uid connection cap counts HTTP and protobuf connections
together; /metrics is refused to a plain user; an API key used on the TCP
listener spends its owner's quota, whoever holds it; users revoke only their
own keys, root anyone's.

    test_http_users.py MIXTRALD MIXTRAL MIXTRAL_RUN DEMO_MODEL_DIR
"""
import json
import os
import socket
import subprocess
import sys
import time
import traceback

if os.geteuid() != 0:
    print("SKIP: needs root (the test users' processes drop to their uids)")
    sys.exit(77)
try:
    import openai
    from daemon import Daemon, check, failures, finish, read_response, request, setup
except ImportError as e:
    print(f"SKIP: {e} (tools/install-deps sets up .venv with the pinned openai package)")
    sys.exit(77)

mixtrald, run, model = setup(sys.argv)
ALICE, BOB = 60001, 60002
HELLO = [{"role": "user", "content": "Hello there"}]
CONFIG = """max_connections_per_uid = 4
[quota]
tokens_per_hour = 200
max_tokens = 40
"""


def as_user(uid, fn):
    """fn() in a child running as uid (no groups): (whether all its checks
    held, what fn returned, through a pipe as JSON)."""
    sys.stdout.flush()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        code = 2
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.write(wfd, json.dumps(fn()).encode())
            code = 1 if failures else 0
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0, json.loads(out) if out else None


def quota(d):
    return json.loads(d.mixtral("--json", "quota"))


def spend(d):
    """Requests until 429: the hour's budget, never more."""
    c = d.client()
    for i in range(50):
        try:
            c.chat.completions.create(model="m", messages=HELLO, max_tokens=40)
        except openai.RateLimitError as e:
            now = int(time.time())
            after = int(e.response.headers.get("retry-after", "0"))
            check(e.body["code"] == "quota_exceeded" and 0 < after <= 3600 - now % 3600 + 1,
                  f"the quota's 429: {e.body}, Retry-After {after}")
            check(e.response.headers.get("x-should-retry") == ("false" if after > 60 else None),
                  f"x-should-retry with Retry-After {after}: {dict(e.response.headers)}")
            break
    check(2 <= i < 50, f"the budget of 200 tokens allowed {i} requests")
    q = quota(d)
    check(0 < q["used_hour"] <= 200 and q["uid"] == os.getuid(), f"alice's quota after spending it: {q}")


def other_user(d):
    r = d.client().chat.completions.create(model="m", messages=HELLO, max_tokens=5)
    check(r.usage.completion_tokens == 5, "bob was not served")
    q = quota(d)
    check(r.usage.prompt_tokens_details.cached_tokens == 0 and q["used_hour"] == r.usage.total_tokens,
          f"bob's quota counts alice's tokens (or her prompt's cached blocks served bob): {q} {r.usage}")


def connection_cap(d):
    """Four connections of HTTP and protobuf together; the fifth of either is
    refused; another user's are not affected (checked by the parent)."""
    held = []
    for i in range(4):
        if i % 2:
            s = socket.socket(socket.AF_UNIX)
            s.connect(d.socket)  # protobuf: counted while open
        else:
            s = d.raw(request("GET", "/health"))
            status, _, _ = read_response(s)
            check(status == 200, f"HTTP connection {i}: {status}")
        held.append(s)
    time.sleep(0.2)
    status, headers, body = read_response(d.raw(request("GET", "/health")))
    check(status == 429 and headers.get("retry-after") == "1" and b"max_connections_per_uid" in body,
          f"the fifth connection over HTTP: {status} {body!r}")
    r = subprocess.run([sys.argv[2], "--socket", d.socket, "status"], capture_output=True, text=True)
    check(r.returncode == 6 and "BUSY" in r.stderr, f"the fifth connection on the protobuf socket: {r.stderr}")
    for s in held:
        s.close()
    time.sleep(0.2)
    check(d.client().models.list().data, "not served once the connections closed")


def no_metrics(d):
    status, _, body = read_response(d.raw(request("GET", "/metrics")))
    check(status == 403 and json.loads(body)["error"]["code"] == "forbidden", f"/metrics for a user: {status}")


def make_key(d):
    key = d.mixtral("key", "new").strip()
    check(len(json.loads(d.mixtral("--json", "key", "list"))["keys"]) == 1, "bob's keys")
    return key, quota(d)["used_hour"]


def revoke_bobs(d, key_id):
    listed = json.loads(d.mixtral("--json", "key", "list")).get("keys", [])
    r = subprocess.run([sys.argv[2], "--socket", d.socket, "key", "revoke", key_id], capture_output=True, text=True)
    check(r.returncode == 4 and "NOT_FOUND" in r.stderr and not listed,
          f"alice revoked or saw bob's key: {r.returncode} {r.stderr} {listed}")


def main():
    d = Daemon(mixtrald, model, config=CONFIG, tcp=True).ready()
    try:
        check(as_user(ALICE, lambda: spend(d))[0], "alice's quota over HTTP")
        check(as_user(BOB, lambda: other_user(d))[0], "bob's own quota over HTTP")
        check(as_user(ALICE, lambda: connection_cap(d))[0], "the per-uid connection cap over HTTP")
        check(as_user(BOB, lambda: no_metrics(d))[0], "/metrics for a plain user")
        status, _, body = read_response(d.raw(request("GET", "/metrics")))
        check(status == 200 and b"mixtrald_requests_refused_total" in body, "/metrics for root")

        # Bob's key, used by root on the TCP listener, spends bob's quota.
        ok, (key, used) = as_user(BOB, lambda: make_key(d))
        check(ok, "bob's key")
        # (Prompt tokens the KV cache served, bob's HELLO again, are not charged.)
        r = d.tcp_client(key).chat.completions.create(model="m", messages=HELLO, max_tokens=3)
        ok, now = as_user(BOB, lambda: quota(d)["used_hour"])
        spent = r.usage.total_tokens - r.usage.prompt_tokens_details.cached_tokens
        check(r.usage.prompt_tokens_details.cached_tokens > 0 and now == used + spent,
              f"bob's key spent {now - used} of bob's tokens, not {spent}: {r.usage}")
        keys = json.loads(d.mixtral("--json", "key", "list"))["keys"]
        check(len(keys) == 1 and keys[0]["uid"] == BOB, f"root's key list: {keys}")
        check(as_user(ALICE, lambda: revoke_bobs(d, keys[0]["id"]))[0], "a user revoked another's key")
        d.mixtral("key", "revoke", keys[0]["id"])  # root may
        try:
            d.tcp_client(key).models.list()
            check(False, "a key root revoked still works")
        except openai.AuthenticationError:
            pass
        if failures:
            print(d.log_text()[-4000:], file=sys.stderr)
    finally:
        d.cleanup()
    finish("http-users")


main()
