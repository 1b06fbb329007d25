"""``python -m pipeline smoke-test --model URI --url URL``: the deploy smoke test against a scoring
server that is already running (the workflow runs it on the serving image's container).

Waits for ``/ping`` up to ``deploy.startup_timeout_seconds``, then runs the checks of
:func:`pipeline.deployment.smoke_test` with ``URI`` as the batch-scoring reference. Moves no alias,
records no run; exits 2 with the failed checks on one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import serving, smoke
from pipeline.config import PipelineConfig
from pipeline.deployment import holdout_rows, smoke_test
from pipeline.errors import DeployError
from pipeline.tracking.model_io import load_model
from pipeline.tracking.runs import connect, quiet_artifact_downloads


@dataclass(frozen=True)
class SmokeTestResult:
    model_uri: str
    url: str
    checks: list[smoke.Check]

    def describe(self) -> str:
        lines = [f"smoke test of {self.url} against {self.model_uri}: every check passed"]
        lines += [f"  {check.name}: ok ({check.seconds:.2f} s) {check.detail}" for check in self.checks]
        return "\n".join(lines)


def run(config: PipelineConfig, model_uri: str, url: str) -> SmokeTestResult:
    """Smoke-test the server at ``url`` as the deploy stage would test ``model_uri``."""
    url = url.rstrip("/")
    connect(config)  # models:/ URIs resolve against the configured store
    with quiet_artifact_downloads():
        loaded = load_model(model_uri)
    holdout = holdout_rows(config, loaded)
    serving.wait_until_ready(url, config.deploy.startup_timeout_seconds)
    checks = smoke_test(url, loaded, holdout, config)
    failed = smoke.failures(checks)
    if failed:
        raise DeployError(f"the server at {url} failed the smoke test: {failed}")
    return SmokeTestResult(model_uri, url, checks)
