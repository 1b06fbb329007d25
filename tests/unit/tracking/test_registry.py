"""pipeline.tracking.registry, the parts that need no store: which pending version may still be a
registration at work, and the logged model's list of its registered versions."""

from types import SimpleNamespace

from pipeline.tracking import keys, registry


def version(status: str, created_seconds_ago: float, now: float = 1_800_000_000.0):
    return SimpleNamespace(
        tags={keys.VTAG_STATUS: status}, creation_timestamp=int((now - created_seconds_ago) * 1000)
    )


def test_only_a_recent_pending_version_is_in_progress():
    now = 1_800_000_000.0
    assert registry.in_progress(version(keys.STATUS_PENDING, 5), now)
    assert not registry.in_progress(version(keys.STATUS_PENDING, registry.IN_PROGRESS_SECONDS + 1), now)
    assert not registry.in_progress(version(keys.STATUS_DONE, 5), now)


class FakeClient:
    """Just the two calls link_logged_model makes."""

    def __init__(self, tags: dict):
        self.tags = dict(tags)

    def get_logged_model(self, model_id):
        return SimpleNamespace(tags=self.tags)

    def set_logged_model_tags(self, model_id, tags):
        self.tags.update(tags)


def test_a_version_is_listed_once_in_its_logged_models_tag():
    import json

    client = FakeClient({keys.TAG_MODEL_VERSIONS: json.dumps([{"name": "m", "version": 1}])})
    session = SimpleNamespace(client=client)
    registry.link_logged_model(session, "m", "1", "m-1")  # a server listed it already (version as a number)
    assert json.loads(client.tags[keys.TAG_MODEL_VERSIONS]) == [{"name": "m", "version": 1}]
    registry.link_logged_model(session, "m", "2", "m-1")
    assert json.loads(client.tags[keys.TAG_MODEL_VERSIONS])[-1] == {"name": "m", "version": "2"}
    registry.link_logged_model(session, "m", "3", None)  # no logged model: nothing to do
    assert len(json.loads(client.tags[keys.TAG_MODEL_VERSIONS])) == 2
