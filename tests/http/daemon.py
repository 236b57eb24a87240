"""The real mixtrald for the HTTP API's tests: a private directory with its
configuration, state, protobuf socket, HTTP socket and (optionally) a TCP
listener on a free loopback port; READY=1 awaited on a private NOTIFY_SOCKET,
as tests/daemon/harness.c does. Clients: the official openai package through
an httpx transport bound to the Unix socket, and raw sockets."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx2 as httpx
import openai

failures = []


def check(ok, what):
    """Records a failed expectation (the test goes on, and fails at the end)."""
    if not ok:
        failures.append(what)
        print(f"FAIL: {what}", file=sys.stderr, flush=True)
    return ok


def finish(name):
    if failures:
        print(f"{name}: {len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print(f"{name}: ok")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, binary, model, config="", tcp=False, env=None, args=()):
        self.dir = tempfile.mkdtemp(prefix="mixtrald-http-")
        os.chmod(self.dir, 0o755)  # other uids reach the sockets
        self.socket = os.path.join(self.dir, "sock")
        self.http = os.path.join(self.dir, "http.sock")
        self.state = os.path.join(self.dir, "state")
        self.log = os.path.join(self.dir, "daemon.log")
        self.port = free_port() if tcp else None
        with open(os.path.join(self.dir, "conf"), "w") as f:
            f.write("[daemon]\nthreads = 1\n" + config)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(os.path.join(self.dir, "notify"))
        self.notify.setblocking(False)
        argv = [binary, "--model", model, "--socket", self.socket, "--http-socket", self.http, "--config",
                os.path.join(self.dir, "conf"), "--state-directory", self.state, *args]
        if "--bus" not in args:
            argv += ["--bus", "none"]
        if tcp:
            argv += ["--http-listen", f"127.0.0.1:{self.port}"]
        e = dict(os.environ, NOTIFY_SOCKET=os.path.join(self.dir, "notify"), **(env or {}))
        e.pop("JOURNAL_STREAM", None)
        self.proc = subprocess.Popen(argv, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=e)

    def wait_notify(self, needle, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.proc.poll() is None:
            try:
                if needle in self.notify.recv(4096).decode():
                    return True
            except BlockingIOError:
                time.sleep(0.02)
        return False

    def ready(self):
        if not self.wait_notify("READY=1"):
            print(open(self.log).read(), file=sys.stderr)
            raise SystemExit("the daemon did not become ready")
        return self

    def log_text(self):
        with open(self.log) as f:
            return f.read()

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return -1

    def stop(self):
        """SIGTERM, and the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def cleanup(self):
        """Stops the daemon: it must exit 0 (a sanitizer's report would not)."""
        rc = self.stop()
        check(rc == 0, f"the daemon exited {rc}: {self.log_text()[-3000:]}")
        self.notify.close()
        if not os.environ.get("MIXTRALD_TEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- clients --------------------------------------------------------------------

    def client(self, **kw):
        """openai.OpenAI on the Unix socket (the key is not looked at there)."""
        http = httpx.Client(transport=httpx.HTTPTransport(uds=self.http))
        return openai.OpenAI(base_url="http://localhost/v1", api_key="not-needed-on-the-unix-socket",
                             http_client=http, max_retries=0, **kw)

    def tcp_client(self, key, **kw):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0, **kw)

    def raw(self, data, timeout=10):
        """Sends bytes on a fresh connection; returns the connection."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.http)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before it read: the answer is still there to read
        return s

    def mixtral(self, *args, check_rc=True):
        """The mixtral client on the protobuf socket; its stdout."""
        r = subprocess.run([CLIENT, "--socket", self.socket, *args], capture_output=True, text=True, timeout=120)
        if check_rc and r.returncode:
            raise RuntimeError(f"mixtral {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r.stdout

    def status(self):
        return json.loads(self.mixtral("--json", "status"))

    def wait_idle(self, timeout=5):
        """Until no request runs or waits; whether that came."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.status()
            if not s.get("running") and not s.get("queued"):
                return True
            time.sleep(0.05)
        return False


def request(method, path, body=None, headers=()):
    """An HTTP/1.1 request's bytes."""
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", *headers]
    if body is not None:
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def read_response(s, timeout=10):
    """Status, headers (lower-case names) and body of one response, or
    (None, {}, b"") when the connection closed without one."""
    s.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(65536)
        if not b:
            return None, {}, buf
        buf += b
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    if "content-length" in headers:
        while len(body) < int(headers["content-length"]):
            b = s.recv(65536)
            if not b:
                break
            body += b
    return status, headers, body


CLIENT = None


def setup(argv):
    """argv: MIXTRALD MIXTRAL MIXTRAL_RUN DEMO_MODEL_DIR"""
    global CLIENT
    CLIENT = argv[2]
    return argv[1], argv[3], argv[4]
