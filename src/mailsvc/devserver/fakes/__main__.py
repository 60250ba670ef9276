"""`python -m mailsvc.devserver.fakes`: run the fake providers until SIGTERM or SIGINT, after
printing one JSON line with where they listen."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from types import FrameType

from mailsvc.devserver.fakes.server import FakeCredentials, FakeProviders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mailsvc.devserver.fakes",
        description="Fake SendGrid, Mailgun and SES (one HTTP port) and SMTP, on 127.0.0.1.",
    )
    parser.add_argument("--http-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--smtp-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--outbox", type=Path, default=None, help="also keep messages as .eml")
    args = parser.parse_args(argv)

    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    fakes = FakeProviders(FakeCredentials(), outbox=args.outbox)
    fakes.start(http_port=args.http_port, smtp_port=args.smtp_port)
    try:
        print(json.dumps({"http_url": fakes.http_url, "smtp_port": fakes.smtp_port}), flush=True)
        # A timed wait lets the main thread run the signal handler promptly.
        while not stopping.wait(0.5):
            pass
    finally:
        fakes.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
