"""Quick runs of bench.mime and bench.raw_ceiling: no database, no Celery."""

from __future__ import annotations

from pathlib import Path

from bench.mime import run_mime_bench
from bench.raw_ceiling import run_raw_ceiling
from mailsvc.devserver.capture_smtp import start_capture_server
from mailsvc.devserver.embedded import free_port


def test_mime_bench_builders_are_all_correct() -> None:
    results = run_mime_bench(iterations=50, repeats=1)

    assert [r.name for r in results] == [
        "email.message.EmailMessage (policy=SMTP)",
        "email.mime MIMEMultipart + MIMEText",
        "mailsvc build_mime",
    ]
    for result in results:
        assert result.ok, f"{result.name}: {result.problem}"
        assert result.msgs_per_second > 0
        assert result.bytes_avg > 2000


def test_raw_ceiling_delivers_every_message(tmp_path: Path) -> None:
    outbox = tmp_path / "out"
    server = start_capture_server(outbox, port=free_port())
    try:
        result = run_raw_ceiling(server.hostname, server.port, messages=300, processes=1)
    finally:
        server.stop()

    assert result.messages == 300
    assert result.processes == 1
    assert result.connections == 16
    assert result.seconds > 0
    assert result.per_second == result.messages / result.seconds
    assert len(list(outbox.glob("*.eml"))) == 300
