"""The model registry: registered models, versions, their tags and aliases, one registration at a time.

Aliases only (``models:/<name>@champion``); deprecated registry stages are mirrored on request.
Every write retries the errors a racing registration can cause.

One registration at a time: on a database store, a cross-process lock. Through a tracking server
there is none, so registrations order themselves with the registry's own primitives: each version
carries a deterministic marker tag (the optimization run it came from), is re-read after it is
created, and a losing duplicate is deleted; then versions move the aliases in the order of their
numbers, each waiting while a lower-numbered version is still pending.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlflow
import sqlalchemy

from pipeline.errors import LookupFailedError, first_line
from pipeline.settings import ci_run_url, redact
from pipeline.tracking import keys, store
from pipeline.tracking.alias_history import AliasMove, moves_from_tags
from pipeline.tracking.lookups import quote_filter_value, tag_clause
from pipeline.tracking.runs import MAX_TAG_LENGTH
from pipeline.tracking.session import TrackingSession

logger = logging.getLogger(__name__)

# Errors another registration racing ours can cause; retried with bounded back-off.
_RETRYABLE_REGISTRY_CODES = {
    "RESOURCE_ALREADY_EXISTS",
    "ABORTED",
    "TEMPORARILY_UNAVAILABLE",
    "INTERNAL_ERROR",
}
_REGISTRY_ATTEMPTS = 5
_REGISTRY_BACKOFF_SECONDS = 0.2
# A pending version younger than this may belong to a registration still in progress; an older one
# was left by a crash (its rerun finishes it). Registrations take seconds; clocks may differ a little.
IN_PROGRESS_SECONDS = store.LOCK_TIMEOUT_SECONDS
_POLL_SECONDS = 0.5


def _retryable_registry_error(error: BaseException) -> bool:
    if isinstance(error, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError)):
        return True
    code = getattr(error, "error_code", "")
    return isinstance(error, mlflow.exceptions.MlflowException) and code in _RETRYABLE_REGISTRY_CODES


def _with_registry_retries(session: TrackingSession, action, what: str):
    """Run ``action()``; on an integrity or busy error, retry with exponential back-off. A server's
    refusal (401/403) is one line naming the user and the call."""
    for attempt in range(_REGISTRY_ATTEMPTS):
        try:
            return action()
        except Exception as error:
            if (refused := store.access_error(error, session.uri)) is not None:
                raise refused from error  # the cause keeps the call for a stage run to add its outcome
            if attempt == _REGISTRY_ATTEMPTS - 1 or not _retryable_registry_error(error):
                raise
            delay = _REGISTRY_BACKOFF_SECONDS * 2**attempt
            logger.info("%s failed (%s); retrying in %.1f s", what, str(error).splitlines()[0][:200], delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def ensure_registered_model(session: TrackingSession, name: str) -> None:
    """Create the registered model unless it exists (another process may create it meanwhile)."""

    def attempt() -> None:
        try:
            session.client.get_registered_model(name)
        except mlflow.exceptions.MlflowException as error:
            if getattr(error, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                session.client.create_registered_model(
                    name, description="Loan default classifier behind the champion/challenger gate"
                )
            except mlflow.exceptions.MlflowException as created:
                if getattr(created, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise

    _with_registry_retries(session, attempt, f"creating registered model {name!r}")


def model_versions_with_tag(session: TrackingSession, name: str, key: str, value: str) -> list:
    """Versions of ``name`` whose tag ``key`` equals ``value``, oldest first."""
    found = session.client.search_model_versions(
        f"name = {quote_filter_value(name)} and {tag_clause(key, value)}"
    )
    return sorted(found, key=lambda version: int(version.version))


def create_model_version(
    session: TrackingSession,
    name: str,
    model_uri: str,
    run_id: str,
    model_id: str | None,
    tags: Mapping[str, str],
    unique_tag: str,
):
    """Register ``model_uri`` as a new version carrying ``tags`` from the start.

    ``tags[unique_tag]`` identifies the registration: after a failed attempt the version
    is looked up by it before trying again, so a create that reached the store but
    raised is never repeated.
    """
    ensure_registered_model(session, name)
    clean = {key: redact(str(value))[:MAX_TAG_LENGTH] for key, value in tags.items()}

    def attempt():
        try:
            return session.client.create_model_version(
                name, model_uri, run_id=run_id, tags=clean, model_id=model_id
            )
        except Exception:
            existing = model_versions_with_tag(session, name, unique_tag, clean[unique_tag])
            if existing:
                return existing[0]
            raise

    return _with_registry_retries(session, attempt, f"registering a version of {name!r}")


def get_model_version(session: TrackingSession, name: str, version: str):
    return session.client.get_model_version(name, str(version))


def alias_version(session: TrackingSession, name: str, alias: str):
    """The version ``alias`` points to, or None."""
    try:
        return session.client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as error:
        if getattr(error, "error_code", "") in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        raise


@dataclass(frozen=True)
class MoveReason:
    """Why aliases move: the stage moving them, the reason, its run and the code's commit."""

    actor: str
    reason: str
    run_id: str | None
    git_commit: str


def move_alias(
    session: TrackingSession, name: str, alias: str, version: str | None, why: MoveReason
) -> AliasMove | None:
    """Point ``alias`` at ``version`` (None removes it) and record the move in the alias history.

    Every alias move of the pipeline goes through here. Returns the recorded move; None when the
    alias already pointed there (nothing moved, nothing recorded). Call under :func:`registry_lock`.
    """
    before = alias_version(session, name, alias)
    from_version = None if before is None else str(before.version)
    to_version = None if version is None else str(version)
    if from_version == to_version:
        return None
    if to_version is None:
        _with_registry_retries(
            session,
            lambda: session.client.delete_registered_model_alias(name, alias),
            f"removing alias {alias!r} of {name!r}",
        )
    else:
        _with_registry_retries(
            session,
            lambda: session.client.set_registered_model_alias(name, alias, to_version),
            f"moving alias {alias!r} of {name!r}",
        )
    move = AliasMove.now(
        alias,
        from_version,
        to_version,
        actor=why.actor,
        reason=redact(why.reason),
        git_commit=why.git_commit,
        ci_run_url=ci_run_url(),
        run_id=why.run_id,
    )
    key, value = move.tag()
    _with_registry_retries(
        session,
        lambda: session.client.set_registered_model_tag(name, key, value),
        f"recording the move of alias {alias!r} of {name!r}",
    )
    logger.info("%s: @%s %s -> %s (%s)", name, alias, from_version or "none", to_version or "none", why.actor)
    return move


def alias_history(session: TrackingSession, name: str) -> list[AliasMove]:
    """Every recorded move of ``name``'s aliases, oldest first (empty for an unknown model)."""
    try:
        model = session.client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as error:
        if getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return moves_from_tags(model.tags or {})


def set_version_tags(session: TrackingSession, name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a model version in order (the registry has no batch call)."""
    for key, value in tags.items():
        _with_registry_retries(
            session,
            lambda key=key, value=value: session.client.set_model_version_tag(
                name, str(version), key, redact(str(value))[:MAX_TAG_LENGTH]
            ),
            f"tagging version {version} of {name!r}",
        )


def mirror_stage(session: TrackingSession, name: str, version: str, stage: str) -> None:
    """Also move the deprecated registry stage (``register.mirror_stages``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session.client.transition_model_version_stage(name, str(version), stage)


def link_logged_model(session: TrackingSession, name: str, version: str, model_id: str | None) -> None:
    """List the version in its logged model's ``mlflow.modelVersions`` tag, which the UI shows as
    "registered". A tracking server adds it itself; a database store does not."""
    if not model_id:
        return
    try:
        model = session.client.get_logged_model(model_id)
        listed = json.loads(model.tags.get(keys.TAG_MODEL_VERSIONS) or "[]")
        if any((entry.get("name"), str(entry.get("version"))) == (name, str(version)) for entry in listed):
            return
        entry = {"name": name, "version": str(version)}
        session.client.set_logged_model_tags(
            model_id, {keys.TAG_MODEL_VERSIONS: json.dumps([*listed, entry])}
        )
    except (mlflow.exceptions.MlflowException, ValueError) as error:
        # What the UI shows must not stop a registration.
        logger.warning(
            "could not list version %s on logged model %s: %s", version, model_id, redact(first_line(error))
        )


# --- One registration at a time ------------------------------------------------------------------


@contextmanager
def registry_lock(session: TrackingSession, name: str) -> Iterator[bool]:
    """One registration at a time per registered model, across processes, where the store has a lock.

    Yields whether it holds one; without (a tracking server), the caller orders itself with
    :func:`claim_version` and :func:`wait_for_turn`.
    """
    with store.cross_process_lock(session.uri, f"mlflow-registry:{name}") as locked:
        if not locked:
            logger.info(
                "%s offers no lock: registrations order themselves by version marker tags", session.safe_uri
            )
        yield locked


def in_progress(version, now: float | None = None) -> bool:
    """A pending version recent enough to belong to a registration that is still running."""
    if version.tags.get(keys.VTAG_STATUS) != keys.STATUS_PENDING:
        return False
    age = (now if now is not None else time.time()) - (version.creation_timestamp or 0) / 1000
    return age < IN_PROGRESS_SECONDS


def claim_version(session: TrackingSession, name: str, created, unique_tag: str):
    """The version that keeps a registration, re-read after ``created`` was made: the lowest-numbered
    version carrying the same marker. A later duplicate (another process registered the same run at
    the same moment) is deleted. Returns ``(kept version, whether it is ours)``."""
    same = model_versions_with_tag(session, name, unique_tag, created.tags[unique_tag])
    kept = same[0] if same else created
    if str(kept.version) == str(created.version):
        return kept, True
    logger.info(
        "version %s duplicates version %s of the same run: deleting it", created.version, kept.version
    )
    try:
        session.client.delete_model_version(name, str(created.version))
    except mlflow.exceptions.MlflowException as error:
        logger.warning("could not delete duplicate version %s of %r: %s", created.version, name, error)
    return kept, False


def _poll(condition, timeout_seconds: float, what: str) -> bool:
    """Call ``condition()`` until it is true or the time is up; whether it became true."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() >= deadline:
            logger.warning("still waiting for %s after %.0f s; carrying on", what, timeout_seconds)
            return False
        time.sleep(_POLL_SECONDS)
    return True


def wait_for_turn(
    session: TrackingSession, name: str, version: str, timeout_seconds: float = IN_PROGRESS_SECONDS
) -> None:
    """Wait while a lower-numbered version of ``name`` is pending and recent: registrations racing
    through a server then judge and move the aliases one at a time, in version order."""

    def first_in_line() -> bool:
        pending = model_versions_with_tag(session, name, keys.VTAG_STATUS, keys.STATUS_PENDING)
        return not [v for v in pending if int(v.version) < int(version) and in_progress(v)]

    _poll(first_in_line, timeout_seconds, f"the registrations ahead of version {version} of {name!r}")


def wait_until_done(
    session: TrackingSession, name: str, version: str, timeout_seconds: float = IN_PROGRESS_SECONDS
):
    """The version once another registration has marked it done (or as it is when the time is up)."""
    latest = {}

    def done() -> bool:
        latest["version"] = get_model_version(session, name, version)
        return latest["version"].tags.get(keys.VTAG_STATUS) == keys.STATUS_DONE

    _poll(done, timeout_seconds, f"version {version} of {name!r} to be registered by another process")
    return latest["version"]


@dataclass(frozen=True)
class ModelReference:
    """What a model URI points to in the registry (all None for a URI outside it)."""

    name: str | None = None
    version: str | None = None
    model_id: str | None = None


def resolve_model_uri(session: TrackingSession, uri: str) -> ModelReference:
    """The registered version behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; a logged
    model's id for ``models:/m-...``; nothing for other URIs."""
    prefix = "models:/"
    if not uri.startswith(prefix):
        return ModelReference()
    rest = uri[len(prefix) :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = alias_version(session, name, alias)
        if version is None:
            raise LookupFailedError(f"registered model {name!r} has no alias @{alias}")
    elif "/" in rest:
        name, number = rest.rsplit("/", 1)
        try:
            version = get_model_version(session, name, number)
        except mlflow.exceptions.MlflowException:
            raise LookupFailedError(f"registered model {name!r} has no version {number}") from None
    else:
        return ModelReference(model_id=rest)
    return ModelReference(version.name, str(version.version), getattr(version, "model_id", None))
