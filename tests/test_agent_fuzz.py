"""schemathesis against the running agent (loopback, a valid token), driven by the agent's own
/v1/openapi.json: valid and invalid requests for every operation, and each answer checked to
be no 5xx, a status the document lists, and a body its schema describes. Bounded: 50
examples an operation, a fixed seed, and a time limit on the whole run (schemathesis's own
``--max-time`` is a budget that fuzzing repeats to fill, so the limit is the subprocess's).
About 10 s a mode here; on the agent before issue 14 the same run finds 10 failures (501 HTML
answers to TRACE, among them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgepipe.host.client import AgentClient
from edgepipe.host.local import start_agent, stop_agent

TOKEN = "fuzz-token-0000"
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_server_error_or_undocumented_answer(tmp_path, mode):
    pytest.importorskip("schemathesis")
    url, proc = start_agent(tmp_path / "agent", TOKEN, extra_args=("--idle-timeout", "5"))
    try:
        doc = tmp_path / "openapi.json"
        doc.write_text(json.dumps(AgentClient(url, TOKEN).openapi()))
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", str(doc), "--url", url,
             "-H", f"Authorization: Bearer {TOKEN}", "--checks", CHECKS, "--mode", mode,
             "--max-examples", "50", "--seed", "14", "--workers", "1",
             "--request-timeout", "30", "--phases", "examples,coverage,fuzzing",
             "--no-shrink", "--warnings", "off"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert AgentClient(url, TOKEN).health()["status"] == "ok"  # still serving
    finally:
        stop_agent(proc)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "no issues found" in done.stdout.lower() and " 14 passed" in done.stdout
