"""An SMTP server for the fault suite (aiosmtpd) that records every message it
accepts and can be told to fail.

    python3 smtp_sink.py --port P --record mail.jsonl --mode-file mode

Each accepted message is one JSON line: {at, message_id, to, subject}. The
mode file, read on every command, holds one word:

    ok      accept everything (also when the file is missing or empty)
    4xx     answer `451 4.3.0` to MAIL FROM (a temporary failure)
    5xx     answer `554 5.3.0` to MAIL FROM (a permanent failure)
    slow    take 0.8 s over each message before accepting it

Refusing connections is done by stopping this process (the suite restarts it).
"""

import argparse
import asyncio
import email
import email.policy
import json
import signal
import time

from aiosmtpd.controller import Controller


class Recorder:
    def __init__(self, record, mode_file):
        self.record = record
        self.mode_file = mode_file

    def mode(self):
        try:
            with open(self.mode_file) as f:
                return f.read().strip() or "ok"
        except OSError:
            return "ok"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        m = self.mode()
        if m == "4xx":
            return "451 4.3.0 Mail server temporarily failing (fault injection)"
        if m == "5xx":
            return "554 5.3.0 Mail server failing (fault injection)"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.mode() == "slow":
            await asyncio.sleep(0.8)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        line = {
            "at": time.time(),
            "message_id": (msg.get("Message-ID") or "").strip(),
            "to": envelope.rcpt_tos,
            "subject": str(msg.get("Subject") or ""),
        }
        # Written and flushed before the 250 goes out: what the client was told
        # was accepted is on disk.
        with open(self.record, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
        return "250 Message accepted for delivery"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--mode-file", required=True)
    a = p.parse_args()
    c = Controller(Recorder(a.record, a.mode_file), hostname="127.0.0.1", port=a.port)
    c.start()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    print(f"smtp sink on 127.0.0.1:{a.port}", flush=True)
    loop.run_until_complete(stop.wait())
    c.stop()


if __name__ == "__main__":
    main()
