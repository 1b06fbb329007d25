"""Post a pipeline run's summary on its pull request as one comment, edited on every new run.

Run by .github/workflows/pr-comment.yml from the default branch, never from the pull request's
code. It reads only data the pull request's run produced (its ``summary.md`` and the pull
request's number), checks the number, and talks to GitHub's REST API with the workflow's token.

    python scripts/pr_comment.py --summary pr-summary/summary.md --number-file pr-summary/number
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path

MARKER = "<!-- loan-mlops: model comparison -->"
# GitHub refuses a comment body over 65,536 characters.
MAX_BODY = 60_000


def build_body(summary: str, run_url: str = "", conclusion: str = "") -> str:
    """The comment: a hidden marker (to find it again), the summary, and where it came from."""
    text = summary.strip()
    if len(text) > MAX_BODY:
        text = (
            text[:MAX_BODY].rsplit("\n", 1)[0] + "\n\n_(cut: the full summary is in the run's job summary)_"
        )
    footer = []
    if run_url:
        footer.append(f"[the pipeline run]({run_url})")
    if conclusion and conclusion != "success":
        footer.append(f"the run ended **{conclusion}**")
    lines = [MARKER, text]
    if footer:
        lines += ["", "---", "From " + "; ".join(footer) + ". This comment is updated on every push."]
    return "\n".join(lines) + "\n"


def read_number(path: Path) -> int:
    """The pull request's number, refusing anything but digits (it comes from the run's artifact)."""
    text = path.read_text(encoding="utf-8").strip()
    if not text.isdigit() or len(text) > 10:
        raise ValueError(f"{path} does not hold a pull request number")
    return int(text)


class GitHub:
    """The three REST calls this needs, with the token in a header (never in a URL or a log)."""

    def __init__(self, api_url: str, repository: str, token: str):
        self.base = f"{api_url.rstrip('/')}/repos/{repository}"
        self.token = token

    def _call(self, method: str, url: str, payload: dict | None = None):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/vnd.github+json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null"), response.headers.get("Link", "")

    def comments(self, number: int) -> list[dict]:
        found, url = [], f"{self.base}/issues/{number}/comments?per_page=100"
        while url:
            page, link = self._call("GET", url)
            found += page
            url = next(
                (part.split(";")[0].strip(" <>") for part in link.split(",") if 'rel="next"' in part), ""
            )
        return found

    def create(self, number: int, body: str) -> dict:
        return self._call("POST", f"{self.base}/issues/{number}/comments", {"body": body})[0]

    def update(self, comment_id: int, body: str) -> dict:
        return self._call("PATCH", f"{self.base}/issues/comments/{comment_id}", {"body": body})[0]


def upsert(github: GitHub, number: int, body: str) -> tuple[str, int]:
    """Edit our earlier comment on the pull request, or add it the first time; ``(action, id)``."""
    ours = [c for c in github.comments(number) if str(c.get("body", "")).startswith(MARKER)]
    if ours:
        return "updated", int(github.update(ours[0]["id"], body)["id"])
    return "created", int(github.create(number, body)["id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("--number-file", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="print the body instead of posting it")
    args = parser.parse_args(argv)
    body = build_body(
        args.summary.read_text(encoding="utf-8"),
        os.environ.get("RUN_URL", ""),
        os.environ.get("CONCLUSION", ""),
    )
    try:
        number = read_number(args.number_file)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(body)
        return 0
    github = GitHub(
        os.environ.get("GITHUB_API_URL", "https://api.github.com"),
        os.environ["REPOSITORY"],
        os.environ["GH_TOKEN"],
    )
    action, comment_id = upsert(github, number, body)
    print(f"{action} comment {comment_id} on pull request #{number}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
