"""scripts/pr_comment.py: the comment body, and one comment kept up to date through a GitHub-shaped API."""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.conftest import PROJECT_ROOT

spec = importlib.util.spec_from_file_location("pr_comment", PROJECT_ROOT / "scripts" / "pr_comment.py")
pr_comment = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pr_comment)

SUMMARY = "# Model check: promoted\n\n**Promoted**: `m` version 3 is the champion now.\n"


def test_body_carries_the_marker_the_summary_and_the_run():
    body = pr_comment.build_body(SUMMARY, "https://github.example/run/7", "success")
    assert body.startswith(pr_comment.MARKER + "\n# Model check: promoted")
    assert "[the pipeline run](https://github.example/run/7)" in body and "ended" not in body
    failed = pr_comment.build_body(SUMMARY, "https://github.example/run/8", "failure")
    assert "the run ended **failure**" in failed


def test_a_huge_summary_is_cut_below_github_s_limit():
    body = pr_comment.build_body("x" * 10 + "\n" + "y" * 100_000)
    assert len(body) < 65_536 and "(cut:" in body


@pytest.mark.parametrize("text", ["12\n", "7"])
def test_the_number_is_read_as_digits(tmp_path, text):
    (tmp_path / "number").write_text(text)
    assert pr_comment.read_number(tmp_path / "number") == int(text)


@pytest.mark.parametrize("text", ["", "12; rm -rf /", "-3", "1e3", "12345678901"])
def test_anything_but_a_number_is_refused(tmp_path, text):
    (tmp_path / "number").write_text(text)
    with pytest.raises(ValueError, match="pull request number"):
        pr_comment.read_number(tmp_path / "number")


class FakeGitHub(BaseHTTPRequestHandler):
    """Issue comments of one repository, with a second page to follow; requires the bearer token."""

    comments: list[dict]
    calls: list[tuple[str, str]]

    def _reply(self, status: int, payload, link: str = "") -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if link:
            self.send_header("Link", link)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != "Bearer t0ken":
            self._reply(401, {"message": "Bad credentials"})
            return False
        return True

    def do_GET(self):
        self.calls.append(("GET", self.path))
        if not self._authorised():
            return
        host = f"http://127.0.0.1:{self.server.server_port}"
        if "page=2" in self.path:
            self._reply(200, self.comments[1:])
        else:
            link = f'<{host}/repos/o/r/issues/5/comments?per_page=100&page=2>; rel="next"'
            self._reply(200, self.comments[:1], link)

    def _body(self) -> str:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))["body"]

    def do_POST(self):
        self.calls.append(("POST", self.path))
        if self._authorised():
            comment = {"id": 100 + len(self.comments), "body": self._body()}
            self.comments.append(comment)
            self._reply(201, comment)

    def do_PATCH(self):
        self.calls.append(("PATCH", self.path))
        if self._authorised():
            comment_id = int(self.path.rsplit("/", 1)[1])
            comment = next(c for c in self.comments if c["id"] == comment_id)
            comment["body"] = self._body()
            self._reply(200, comment)

    def log_message(self, *args):
        pass


@pytest.fixture
def github():
    FakeGitHub.comments = [{"id": 1, "body": "LGTM"}]
    FakeGitHub.calls = []
    server = HTTPServer(("127.0.0.1", 0), FakeGitHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield pr_comment.GitHub(f"http://127.0.0.1:{server.server_port}", "o/r", "t0ken"), FakeGitHub
    server.shutdown()
    server.server_close()


def test_the_first_run_adds_a_comment_and_later_runs_edit_it(github):
    client, state = github
    first = pr_comment.build_body(SUMMARY, "https://github.example/run/1")
    assert pr_comment.upsert(client, 5, first) == ("created", 101)
    second = pr_comment.build_body(SUMMARY.replace("promoted", "rejected"), "https://github.example/run/2")
    assert pr_comment.upsert(client, 5, second) == ("updated", 101)  # found on the second page
    assert [c["body"] for c in state.comments] == ["LGTM", second]
    assert [method for method, _ in state.calls].count("POST") == 1
    assert any("page=2" in path for _, path in state.calls)


def test_the_script_posts_from_the_files_and_the_environment(github, tmp_path, monkeypatch, capsys):
    client, state = github
    (tmp_path / "summary.md").write_text(SUMMARY)
    (tmp_path / "number").write_text("5\n")
    monkeypatch.setenv("GITHUB_API_URL", client.base.rsplit("/repos/", 1)[0])
    monkeypatch.setenv("REPOSITORY", "o/r")
    monkeypatch.setenv("GH_TOKEN", "t0ken")
    monkeypatch.setenv("RUN_URL", "https://github.example/run/3")
    arguments = ["--summary", str(tmp_path / "summary.md"), "--number-file", str(tmp_path / "number")]
    assert pr_comment.main(arguments) == 0
    assert "created comment 101 on pull request #5" in capsys.readouterr().out
    assert state.comments[-1]["body"].startswith(pr_comment.MARKER)
    assert "t0ken" not in json.dumps(state.comments)
