"""A quick run of bench.templates: every built-in renders and builds a correct message."""

from __future__ import annotations

from bench.templates import markdown, run_template_bench
from mailsvc.templates.builtin import BUILTIN_NAMES


def test_template_bench_renders_and_builds_every_built_in() -> None:
    results = run_template_bench(iterations=5, repeats=1)

    assert [r.template for r in results] == list(BUILTIN_NAMES)
    for result in results:
        assert result.ok, f"{result.template}: {result.problem}"
        assert result.per_second > 0
        assert result.us_per_message == 1e6 / result.per_second
        assert result.bytes_avg > 3000
    table = markdown(results).splitlines()
    assert table[0].startswith("| template | renders+builds/s (1 core) | µs/msg | avg bytes |")
    assert len(table) == 2 + len(BUILTIN_NAMES)
