"""The commands: ``python -m pipeline <command>`` and the ``mlflow-loan-*`` console scripts.

Thin: parse flags, load config, call the stage's ``run``, print its ``describe()``.
Every :class:`~pipeline.errors.PipelineError` becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.config import DEFAULT_CONFIG_PATH, load_config
from pipeline.errors import PipelineError, first_line
from pipeline.settings import TRACKING_URI_ENV, redact
from pipeline.termination import Terminated, handling_sigterm
from pipeline.termination import received as sigterm_received

logger = logging.getLogger("pipeline")

# Exit code of an unexpected failure (a bug, or the store lost mid-stage).
EXIT_FAILURE = 1


def _research(config, args) -> Any:
    from pipeline import budget
    from pipeline.stages import research

    # The budget is the command's wall time: the interpreter's start and imports count too.
    return research.run(config, started=budget.process_started())


def _optimize(config, args) -> Any:
    from pipeline import budget
    from pipeline.stages import optimize

    return optimize.run(config, research_run_id=args.research_run_id, started=budget.process_started())


def _register(config, args) -> Any:
    from pipeline.stages import register

    return register.run(config, optimize_run_id=args.optimize_run_id, fail_on_reject=args.fail_on_reject)


def _predict(config, args) -> Any:
    from pipeline.stages import predict

    return predict.run(config, model_uri=args.model, input_path=args.input, output_path=args.output)


def _deploy(config, args) -> Any:
    from pipeline.stages import deploy

    return deploy.run(config)


def _rollback(config, args) -> Any:
    from pipeline.stages import rollback

    return rollback.run(config)


def _smoke_test(config, args) -> Any:
    from pipeline.stages import smoke_test

    return smoke_test.run(config, model_uri=args.model, url=args.url)


def _monitor(config, args) -> Any:
    from pipeline.stages import monitor

    return monitor.run(config, input_path=args.input, model_uri=args.model, output_dir=args.output_dir)


def _results(config, args) -> Any:
    from pipeline.stages import results

    return results.run(config, output_dir=args.output_dir)


def _report(config, args) -> Any:
    from pipeline.stages import report

    return report.run(config, output_dir=args.output_dir)


def _db_upgrade(config, args) -> Any:
    from pipeline.stages import db_upgrade

    return db_upgrade.run(config, backup_dir=args.backup_dir)


def _restore_baseline(config, args) -> Any:
    from pipeline.stages import baseline

    return baseline.run(config, source=args.source, source_url=args.source_url)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="parameters file (default: params.yaml)"
    )
    parser.add_argument("--profile", help="a profile from the config's 'profiles' section, e.g. fast")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"loan-mlops {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_common(sub)
        sub.set_defaults(handler=handler)
        return sub

    command("research", _research, "stage 1: cross-validated comparison of the candidate portfolio")
    optimize = command("optimize", _optimize, "stage 2: tune, calibrate, choose a threshold, test once")
    optimize.add_argument("--research-run-id", help="research run to start from (default: latest)")
    register = command("register", _register, "stage 3: register the model behind the champion gate")
    register.add_argument("--optimize-run-id", help="optimization run to register (default: latest)")
    register.add_argument(
        "--fail-on-reject", action="store_true", default=None, help="exit 1 when the gate rejects"
    )
    command("deploy", _deploy, "smoke-test @champion behind a scoring server, then make it @production")
    command("rollback", _rollback, "smoke-test the previous production version, then restore it")
    smoke = command("smoke-test", _smoke_test, "the deploy smoke test against a running scoring server")
    smoke.add_argument(
        "--model", required=True, help="the model the server serves, e.g. models:/NAME@production"
    )
    smoke.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:5001")
    predict = command("predict", _predict, "score applicants with a registered model")
    predict.add_argument("--model", required=True, help="model URI, e.g. models:/NAME@champion")
    predict.add_argument("--input", type=Path, required=True, help="CSV or Parquet of applicants")
    predict.add_argument("--output", type=Path, required=True, help="CSV to write")
    monitor = command(
        "monitor", _monitor, "population stability (PSI, CSI) of new applicants; exit 3 if shifted"
    )
    monitor.add_argument("--input", type=Path, required=True, help="CSV or Parquet of new applicants")
    monitor.add_argument("--model", help="model URI (default: models:/<register.model_name>@champion)")
    monitor.add_argument("--output-dir", type=Path, help="default: monitor.output_dir")
    results = command("results", _results, "stage 4: MLflow tables as DataFrames, CSV and summary")
    results.add_argument("--output-dir", type=Path, help="default: results.output_dir")
    report = command("report", _report, "execute the results notebook and render it to HTML")
    report.add_argument("--output-dir", type=Path, help="default: results.output_dir")
    restore = command(
        "restore-baseline", _restore_baseline, "restore main's published store as a pull request's baseline"
    )
    restore.add_argument("--from", dest="source", type=Path, required=True, help="downloaded artifacts")
    restore.add_argument("--source-url", help="where they came from (the run's URL), for the record")
    upgrade = command("db-upgrade", _db_upgrade, "back up, then migrate the tracking database schema")
    upgrade.add_argument("--backup-dir", type=Path, help="where to write the backup (default: backups/)")
    return parser


# Library warnings that tell a user of the commands nothing they can act on, matched by the start of
# their message (never by module or category alone, so a library's other warnings still show):
NOISE_WARNINGS: tuple[str, ...] = (
    # MLflow: a local CSV path matches its two local-file source kinds; it picks one, correctly.
    "The specified dataset source can be interpreted in multiple ways",
    # MLflow, on the logged train/test parts: our model's signature declares its own column types.
    "Hint: Inferred schema contains integer column(s)",
    # scikit-learn, from forests fitted in parallel inside joblib workers: the configuration it
    # cannot propagate is the default one.
    "`sklearn.utils.parallel.delayed` should be used with `sklearn.utils.parallel.Parallel`",
)
# Worker processes (joblib's, the scoring server) start from the environment, not our filters.
_WORKER_NOISE = ("`sklearn.utils.parallel.delayed` should be used with",)


def silence_noise_warnings() -> None:
    """Filter :data:`NOISE_WARNINGS` here and in the worker processes this one starts."""
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=UserWarning)
    # PYTHONWARNINGS splits fields on ':', so only messages without one can travel this way.
    entries = [f"ignore:{message}:UserWarning" for message in _WORKER_NOISE]
    present = [e for e in os.environ.get("PYTHONWARNINGS", "").split(",") if e]
    os.environ["PYTHONWARNINGS"] = ",".join(dict.fromkeys([*present, *entries]))


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", force=True)
    # Library chatter (schema migrations, tracing) is noise at our INFO level.
    for name in ("alembic", "mlflow", "urllib3", "matplotlib", "papermill", "traitlets"):
        logging.getLogger(name).setLevel(logging.WARNING if not verbose else logging.INFO)
    silence_noise_warnings()  # with --verbose too: they help no one debug either
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", module="mlflow")
        # MLflow logs a traceback for every database error before re-raising it; we report it once.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _store_failure(error: Exception) -> PipelineError | None:
    """The one-line error for a tracking store lost or refusing us outside a stage run, if that is it."""
    if "mlflow" not in sys.modules:  # nothing reached the store yet
        return None
    from pipeline.tracking import store

    return store.store_error(error, os.environ.get(TRACKING_URI_ENV, ""))


def report_thread_failure(failure: threading.ExceptHookArgs) -> None:
    """A background thread's uncaught error (e.g. Optuna's heartbeat): one log line, not a traceback.

    A lost store is only logged at debug level: the main thread hits it too and reports it once.
    """
    error = failure.exc_value
    if error is None or isinstance(error, SystemExit):
        return
    name = failure.thread.name if failure.thread is not None else "?"
    if isinstance(error, Exception) and _store_failure(error) is not None:
        logger.debug("thread %s lost the tracking store: %s", name, redact(str(error)))
        return
    verbose = logger.isEnabledFor(logging.DEBUG)
    logger.error(
        "background thread %s failed: %s: %s",
        name,
        type(error).__name__,
        redact(first_line(error, default="")),
        exc_info=(failure.exc_type, error, failure.exc_traceback) if verbose else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    # MLflow prints a "View run at <tracking URI>" line for every run a server ends: stdout is the
    # command's report, and a URI may carry credentials. MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=false
    # brings the links back.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    previous_thread_hook, threading.excepthook = threading.excepthook, report_thread_failure
    try:
        with handling_sigterm():
            return _run(args)
    finally:
        threading.excepthook = previous_thread_hook


def _terminated(error: BaseException) -> int:
    notes = "; ".join(getattr(error, "__notes__", [])) or "runs in progress were marked KILLED"
    print(f"terminated: received SIGTERM; {notes}", file=sys.stderr)
    return Terminated.exit_code


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, profile=args.profile)
        result = args.handler(config, args)
    except PipelineError as error:
        print(f"{error.kind}: {redact(str(error))}", file=sys.stderr)
        return error.exit_code
    except Terminated as error:
        return _terminated(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or a lost store: one line, traceback only with --verbose
        if sigterm_received():  # SIGTERM surfaced as another error inside a library
            return _terminated(error)
        if args.verbose:
            logger.exception("unexpected failure")
        if (mapped := _store_failure(error)) is not None:
            print(f"{mapped.kind}: {redact(str(mapped))}", file=sys.stderr)
            return mapped.exit_code
        reason = redact(first_line(error, default=""))
        print(f"failed: {type(error).__name__}: {reason} (run with -v for details)", file=sys.stderr)
        return EXIT_FAILURE
    if sigterm_received():  # a library caught the signal's exception and the command carried on
        return _terminated(Terminated("received SIGTERM"))
    describe = getattr(result, "describe", None)
    if callable(describe):
        print(describe())
    return int(getattr(result, "exit_code", 0))


def _console(command: str) -> Callable[[], None]:
    def entry() -> None:
        sys.exit(main([command, *sys.argv[1:]]))

    entry.__name__ = f"{command.replace('-', '_')}_command"
    return entry


research_command = _console("research")
optimize_command = _console("optimize")
register_command = _console("register")
results_command = _console("results")
deploy_command = _console("deploy")
predict_command = _console("predict")
