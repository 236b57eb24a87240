"""Types into `mixtral chat` on a pseudo-terminal, as a person would, for
test_mixtral_client.sh: keys (pastes included) sent when a prompt shows,
signals sent as a terminal's Ctrl-C and Ctrl-Z would.

    pty_chat.py TRANSCRIPT STDOUT STEP... -- COMMAND...

The command runs with the terminal as standard input and error, standard
output going to the file STDOUT, in a process group of its own (so that a
stop is a real stop). Each STEP first waits (30 s at most): for a prompt
drawn since the last keys were sent, '>' for ">>> " and '.' for "... ";
'~' for the rest of the step to show (and does nothing else); '-' not at
all. Then it sends the rest of the step as keys (Python escapes: "\\r" is
Enter, "\\x1b[200~" starts a paste) or, for "!INT" and "!TSTP", that
signal; after SIGTSTP it waits for the process to stop, then continues it.
After the last step it waits for a new ">>> " and types Ctrl-D. All the
terminal showed goes to TRANSCRIPT. Exits with the command's status (124
when it hangs).
"""
import codecs
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time

PROMPTS = {">": b">>> ", ".": b"... "}


class Terminal:
    def __init__(self, command, stdout):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = dict(os.environ, TERM="xterm")
        self.proc = subprocess.Popen(command, stdin=slave, stdout=stdout, stderr=slave, env=env,
                                     process_group=0)
        # Kept to see the terminal's modes: libedit draws its prompt before
        # it leaves cooked mode, where keys would be echoed and Ctrl-D taken
        # for the end of a line.
        self.slave = slave
        self.seen = b""
        self.sent_at = {k: 0 for k in PROMPTS}

    def pump(self, timeout):
        """Reads what the terminal shows for up to timeout seconds."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        self.seen += data
        return bool(data)

    def wait_prompt(self, kind):
        deadline = time.monotonic() + 30
        while self.seen.count(PROMPTS[kind]) <= self.sent_at[kind]:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError(f"no new {PROMPTS[kind]!r} prompt; the terminal showed {self.seen[-400:]!r}")
            self.pump(0.1)
        while termios.tcgetattr(self.slave)[3] & termios.ICANON:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError("the terminal stays in cooked mode")
            self.pump(0.01)

    def wait_text(self, text):
        deadline = time.monotonic() + 30
        while text not in self.seen:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError(f"{text!r} did not show; the terminal showed {self.seen[-400:]!r}")
            self.pump(0.1)

    def send(self, keys):
        for k in PROMPTS:
            self.sent_at[k] = self.seen.count(PROMPTS[k])
        os.write(self.master, keys)

    def stop_and_continue(self):
        os.kill(self.proc.pid, signal.SIGTSTP)
        deadline = time.monotonic() + 10
        while not self.stopped():
            if time.monotonic() > deadline:
                raise TimeoutError("SIGTSTP did not stop the process")
            self.pump(0.05)
        self.pump(0.2)
        os.kill(self.proc.pid, signal.SIGCONT)

    def stopped(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            # The state follows the command name, which is in parentheses.
            return f.read().rsplit(")", 1)[1].split()[0] == "T"

    def finish(self):
        deadline = time.monotonic() + 30
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump(0.1)
        while self.pump(0.1):
            pass
        os.close(self.slave)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            return 124
        return self.proc.returncode


def main():
    args = sys.argv[1:]
    split = args.index("--")
    transcript, stdout_path, steps, command = args[0], args[1], args[2:split], args[split + 1:]
    with open(stdout_path, "wb") as out:
        term = Terminal(command, out)
        status = 124
        try:
            for step in steps:
                kind, action = step[0], step[1:]
                if kind == "~":
                    term.wait_text(action.encode("utf-8"))
                    continue
                if kind != "-":
                    term.wait_prompt(kind)
                if action == "!INT":
                    os.kill(term.proc.pid, signal.SIGINT)
                elif action == "!TSTP":
                    term.stop_and_continue()
                else:
                    term.send(codecs.decode(action, "unicode_escape").encode("utf-8"))
            term.wait_prompt(">")
            term.send(b"\x04")
            status = term.finish()
        except TimeoutError as e:
            print(f"pty_chat.py: {e}", file=sys.stderr)
            term.proc.kill()
            term.finish()
        with open(transcript, "wb") as t:
            t.write(term.seen)
    sys.exit(status)


if __name__ == "__main__":
    main()
