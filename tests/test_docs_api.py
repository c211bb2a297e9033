"""docs/api.md runs as written: every ```sh block, in page order, in one shell, against
a real server; only the base URL and the admin key change.

Each block must exit 0, and every request in it must be answered 2xx, or with a status
the block announces in a `# answers NNN` comment (the examples of errors); never 5xx.
And the page must show a curl example of every route the server has.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from mqpy.api.app import ROUTES
from tests.conftest import ServerFactory
from tests.support import raw_http
from tests.support.docs import fenced_blocks, shell_env
from tests.support.load import FAST_RETRIES

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"
DOC_URL = "http://127.0.0.1:8080"
DOC_KEY = "change-me-to-your-admin-key"
ADMIN_KEY = "docs-api-test-admin-key-5be1"
_ANNOUNCED = re.compile(r"#\s*answers\s+((?:\d{3}(?:\s*(?:,|or)\s*)?)+)")
_STATUS_LINE = re.compile(r"^mqpy-docs-status (\d{3})$", re.MULTILINE)
_BLOCK_LINE = re.compile(r"^mqpy-docs-block (\d+)$", re.MULTILINE)
# Each curl reports its status on stderr, whatever the example does with stdout.
_PRELUDE = r"""set -euo pipefail
curl() {
  command curl --silent --show-error \
    --write-out '%{stderr}\nmqpy-docs-status %{http_code}\n' "$@"
}
"""

pytestmark = pytest.mark.skipif(
    (shutil.which("curl") is None or shutil.which("jq") is None) and not os.environ.get("CI"),
    reason="the examples of docs/api.md need curl and jq",
)


def sh_blocks() -> list[str]:
    return [block.text for block in fenced_blocks(DOCS.read_text(), "sh")]


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query


def curl_requests(block: str) -> list[Request]:
    """The method and path of every curl command in `block`."""
    requests: list[Request] = []
    words = _shell_words(block.replace("\\\n", " "))
    starts = [number for number, word in enumerate(words) if word == "curl"]
    for start in starts:
        command: list[str] = []
        for word in words[start + 1 :]:
            if word == "curl" or (word and set(word) <= _OPERATORS):
                break
            command.append(word)
        url = next((word for word in command if word.startswith("$MQPY_URL")), None)
        if url is not None:
            path = url.removeprefix("$MQPY_URL").split("?")[0]
            requests.append(Request(_method(command), path))
    return requests


_OPERATORS = set("|&;()<>\n")


def _shell_words(text: str) -> list[str]:
    """Words as the shell splits them, with operators and line ends as words of their
    own (a quoted string may span lines), comments dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars="|&;()<>\n")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _method(words: list[str]) -> str:
    for flag in ("-X", "--request"):
        if flag in words:
            return words[words.index(flag) + 1].upper()
    if "-I" in words or "--head" in words:
        return "HEAD"
    if any(w in ("-d", "--data", "--data-raw", "--data-binary", "--json") for w in words):
        return "POST"
    return "GET"


def test_the_page_has_a_curl_example_of_every_route() -> None:
    shown = [request for block in sh_blocks() for request in curl_requests(block)]
    missing = []
    for method, path, _ in ROUTES:
        pattern = re.compile(re.sub(r"\\\{\w+\\\}", r"[^/]+", re.escape(path)) + "/?")
        if not any(r.method == method and pattern.fullmatch(r.path) for r in shown):
            missing.append(f"{method} {path}")
    assert not missing, f"docs/api.md has no curl example of {missing}"


# In a group a /disconnect reaches the other processes within a second, and the
# examples /send on a disconnected sender at once (docs/operations.md).
@pytest.mark.one_process
def test_the_examples_run_in_order(start_server: ServerFactory, tmp_path: Path) -> None:
    blocks = sh_blocks()
    assert len(blocks) >= 20, len(blocks)
    server = start_server(*FAST_RETRIES, "--max-attempts", "2", env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    script = _PRELUDE + "".join(
        f"echo 'mqpy-docs-block {number}' >&2\n{block}\n" for number, block in enumerate(blocks)
    )
    script = script.replace(DOC_URL, server.url).replace(DOC_KEY, ADMIN_KEY)
    (tmp_path / "examples.sh").write_text(script)
    env = shell_env()
    done = subprocess.run(
        ["bash", str(tmp_path / "examples.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    per_block = _statuses_per_block(done.stderr)
    last = max(per_block, default=-1)
    assert done.returncode == 0, (
        f"the block {last} exited {done.returncode}:\n{blocks[last] if last >= 0 else ''}\n"
        f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )
    assert last == len(blocks) - 1
    for number, statuses in per_block.items():
        allowed = _announced(blocks[number])
        wrong = [s for s in statuses if s >= 500 or not (200 <= s < 300 or s in allowed)]
        assert not wrong, f"the block {number} got {wrong}:\n{blocks[number]}\n{done.stdout}"
    # The server is still well after all that.
    assert raw_http.request(server.url, "GET", "/healthz").status == 200


def _statuses_per_block(stderr: str) -> dict[int, list[int]]:
    per_block: dict[int, list[int]] = {}
    current = -1
    for line in stderr.splitlines():
        block = _BLOCK_LINE.fullmatch(line)
        if block:
            current = int(block.group(1))
            per_block[current] = []
            continue
        status = _STATUS_LINE.fullmatch(line)
        if status and current >= 0:
            per_block[current].append(int(status.group(1)))
    return per_block


def _announced(block: str) -> set[int]:
    """Statuses other than 2xx the block says it gets: `# answers 404`, `# answers 400
    or 409`."""
    return {
        int(code) for found in _ANNOUNCED.findall(block) for code in re.findall(r"\d{3}", found)
    }


def test_the_curl_parser_reads_methods_and_paths() -> None:
    block = (
        'curl "$MQPY_URL/v1/topics?limit=1" -H "$AUTH"\n'
        "ID=$(curl -X PATCH \"$MQPY_URL/v1/subscriptions/$SUB\" -d '{}' | jq -r .id)\n"
        "curl -d '{}' \\\n  \"$MQPY_URL/send\"  # answers 404\n"
    )
    assert curl_requests(block) == [
        Request("GET", "/v1/topics"),
        Request("PATCH", "/v1/subscriptions/$SUB"),
        Request("POST", "/send"),
    ]
    assert _announced(block) == {404}
    assert _announced("# answers 400 or 409\n# answers 403, 404") == {400, 409, 403, 404}
