"""a2a-sdk's OpenTelemetry wrappers cost ~25 % of an agent's throughput: off unless asked."""

import os
import subprocess
import sys

PROBE = "import berth.examples.echo, a2a.utils.telemetry as t; print(t.otel_enabled)"


def _probe(**env: str) -> str:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "BERTH_OTEL")
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def test_off_by_default_even_when_a2a_is_imported_first():
    assert _probe() == "False"


def test_on_when_asked():
    assert _probe(BERTH_OTEL="1") == "True"
