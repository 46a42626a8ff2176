"""System checks: each misconfiguration raises its own id."""

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test import override_settings

from eventbus import Event, event_handler
from eventbus.catalog import catalog
from eventbus.dispatcher import EventDispatcher, get_event_dispatcher
from tests.testapp.events import OrderClosed, ShopEvent

# Model checks (JSONField support) open a cursor on some Django versions.
pytestmark = pytest.mark.django_db


def ids(messages):
    return [message.id for message in messages]


def run_checks():
    return [m for m in checks.run_checks() if m.id and m.id.startswith("eventbus.")]


def test_the_test_project_is_clean():
    assert run_checks() == []


@override_settings(EVENTBUS=["tests.testapp.events.EVENT_PAYLOAD_MAP"])
def test_setting_must_be_a_dict():
    assert ids(run_checks()) == ["eventbus.E001"]


@override_settings(
    EVENTBUS={
        "CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"],
        "AUTHORIZE": "tests.testapp.authorization.may_subscribe",
        "CATALOG": [],
    }
)
def test_unknown_setting_keys():
    [message] = run_checks()
    assert message.id == "eventbus.E001" and "CATALOG" in message.msg


@override_settings(EVENTBUS={})
def test_empty_settings_warn_about_catalogs_and_authorization():
    assert sorted(ids(run_checks())) == ["eventbus.W001", "eventbus.W003"]


@pytest.fixture
def catalog_problems():
    saved = list(catalog.load_errors)
    yield catalog.load_errors
    catalog.load_errors[:] = saved


def test_catalog_problems_become_errors(catalog_problems):
    catalog.load(("tests.nowhere.MAP", "tests.test_catalog.CONFLICTING"))
    assert ids(run_checks()) == ["eventbus.E002", "eventbus.E004"]
    assert all(message.hint for message in run_checks())


def test_malformed_catalog_is_e003(catalog_problems):
    catalog.load(("tests.testapp.events.ShopEvent",))  # an enum, not a mapping
    assert ids(run_checks()) == ["eventbus.E003"]


def test_unfrozen_payload_and_unknown_private_field(catalog_problems):
    import enum

    from pydantic import BaseModel

    from eventbus import EventSpec

    class Loose(BaseModel):
        value: int

    class Kind(enum.StrEnum):
        LOOSE = "loose.thing"

    catalog.register({Kind.LOOSE: EventSpec(Loose, private_fields=frozenset({"secret"}))})
    try:
        assert ids(run_checks()) == ["eventbus.W002", "eventbus.E009"]
    finally:
        catalog._entries.pop("loose.thing")


def test_miswired_handlers_discovered_at_start_up_fail_manage_py_check(monkeypatch):
    """Start-up records what @event_handler got wrong; `manage.py check` then fails."""
    fresh = EventDispatcher()
    monkeypatch.setattr("eventbus.dispatcher._dispatcher", fresh)
    monkeypatch.setattr("eventbus.checks.get_event_dispatcher", lambda: fresh)

    @event_handler("order.unheard_of")
    def unknown_type(event: Event[OrderClosed]) -> None: ...

    @event_handler(ShopEvent.ORDER_PLACED)
    def wrong_model(event: Event[OrderClosed]) -> None: ...

    @event_handler(ShopEvent.ORDER_CLOSED)
    def fine(event: Event[OrderClosed]) -> None: ...

    fresh.start(handler_modules=())
    assert ids(run_checks()) == ["eventbus.E005", "eventbus.E006"]
    assert "wrong_model" in run_checks()[1].msg
    assert [handler.func for handler in fresh.handlers(ShopEvent.ORDER_CLOSED)] == [fine]
    assert fresh.handlers(ShopEvent.ORDER_PLACED) == ()
    with pytest.raises(SystemCheckError, match="eventbus.E006"):
        call_command("check")


def test_every_id_is_defined_once_in_the_checks_module_with_its_level():
    """Ids live in eventbus.checks (E for errors, W for warnings); no module spells one out."""
    import pathlib
    import re

    import eventbus
    from eventbus import checks as eventbus_checks

    defined = {
        name: value
        for name, value in vars(eventbus_checks).items()
        if re.fullmatch(r"[EW]\d{3}", name)
    }
    assert len(set(defined.values())) == len(defined)
    assert all(value == f"eventbus.{name}" for name, value in defined.items())
    package = pathlib.Path(eventbus.__file__).parent
    for path in package.rglob("*.py"):
        if path.name != "checks.py":
            assert not re.search(r"[\"']eventbus\.[EW]\d{3}[\"']", path.read_text()), path
    # Levels follow the id: every message a check can make agrees with its id.
    source = (package / "checks.py").read_text()
    for level, name in re.findall(r"(Error|Warning)\(\s*.*?id=([EW]\d{3})", source, re.S):
        assert name[0] == level[0], (level, name)


BASE = {
    "CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"],
    "AUTHORIZE": "tests.testapp.authorization.may_subscribe",
}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"AUTHORIZE": None}, ["eventbus.W003"]),
        ({"AUTHORIZE": "tests.nowhere.hook"}, ["eventbus.E010"]),
        ({"SINK": "tests.nowhere.Sink"}, ["eventbus.E011"]),
        ({"SINK": "tests.testapp.models.Order"}, ["eventbus.E011"]),
        ({"SINK": None}, []),
        ({"CHANNEL_LAYER": "missing"}, ["eventbus.E012"]),
        ({"CHANNEL_ROUTER": "tests.nowhere.route"}, ["eventbus.E013"]),
        ({"RELAY_BATCH_SIZE": 0}, ["eventbus.E014"]),
        ({"WS_SEND_TIMEOUT": "10"}, ["eventbus.E014"]),
        ({"MAX_PAYLOAD_BYTES": True}, ["eventbus.E014"]),
        ({"HEALTH_MAX_LAG": 0}, ["eventbus.E014"]),
        ({"HEALTH_MAX_LAG": "60"}, ["eventbus.E014"]),
        ({"HEALTH_MAX_DEAD_RUNS": 0, "HEALTH_MAX_RETRYING": 5}, []),
        ({"HEALTH_MAX_DEAD_RUNS": -1}, ["eventbus.E019"]),
        ({"HEALTH_MAX_FAILED_EVENTS": 1.5}, ["eventbus.E019"]),
        ({"HEALTH_MAX_RETRYING": True}, ["eventbus.E019"]),
        ({"HEALTH_MAX_RETRYING": "3"}, ["eventbus.E019"]),
    ],
)
def test_delivery_settings_are_checked(overrides, expected):
    with override_settings(EVENTBUS={**BASE, **overrides}):
        assert ids(run_checks()) == expected


REDIS_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
    }
}
HOOK = "tests.testapp.presence.presence"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"PRESENCE": HOOK}, []),
        ({"PRESENCE": "tests.nowhere.hook"}, ["eventbus.E021"]),
        ({"PRESENCE": "tests.testapp.presence.MAX_INFO"}, ["eventbus.E021"]),
        ({"PRESENCE": "tests.testapp.models"}, ["eventbus.E021"]),
        ({"PRESENCE_TTL_SECONDS": 10, "PRESENCE_HEARTBEAT_SECONDS": 10}, ["eventbus.E022"]),
        ({"PRESENCE_TTL_SECONDS": 5}, ["eventbus.E022"]),
        ({"PRESENCE_TTL_SECONDS": 0}, ["eventbus.E014"]),
        ({"PRESENCE_HEARTBEAT_SECONDS": "10"}, ["eventbus.E014"]),
        ({"PRESENCE_TTL_SECONDS": 3, "PRESENCE_HEARTBEAT_SECONDS": 1}, []),
    ],
)
def test_presence_settings_are_checked(overrides, expected):
    with override_settings(EVENTBUS={**BASE, **overrides}, CHANNEL_LAYERS=REDIS_LAYERS):
        assert ids(run_checks()) == expected


@pytest.mark.parametrize(
    ("backend", "expected", "says"),
    [
        ("channels.layers.InMemoryChannelLayer", ["eventbus.W008"], "this process's memory"),
        ("tests.sinks.SomeLayer", ["eventbus.W008"], "no presence store"),
        ("channels_redis.pubsub.RedisPubSubChannelLayer", [], ""),
    ],
)
def test_presence_on_a_layer_without_a_shared_store_warns(backend, expected, says):
    layers = {"default": {"BACKEND": backend, "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}}
    with override_settings(EVENTBUS={**BASE, "PRESENCE": HOOK}, CHANNEL_LAYERS=layers):
        messages = run_checks()
    assert ids(messages) == expected
    assert all(says in message.msg for message in messages)


def test_a_multiprocess_directory_that_cannot_be_written_is_e020(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert ids(run_checks()) == []
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    assert ids(run_checks()) == ["eventbus.E020"]
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "file"))
    assert ids(run_checks()) == ["eventbus.E020"]


def test_without_metrics_the_multiprocess_directory_is_not_checked(tmp_path, monkeypatch):
    from eventbus import metrics

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    monkeypatch.setattr(metrics, "_metrics", metrics.NO_METRICS)
    assert ids(run_checks()) == []


def test_missing_channel_layers_setting_is_e012():
    with override_settings(CHANNEL_LAYERS={}):
        assert ids(run_checks()) == ["eventbus.E012"]


CORE = "channels_redis.core.RedisChannelLayer"


@pytest.mark.parametrize(
    ("version", "layers", "expected"),
    [
        # eventbus's own layer gets its timeout from eventbus: nothing to warn about.
        ("8.1.0", {"default": ["redis://127.0.0.1:6379/0"]}, []),
        ("8.1.0", {"default": [("127.0.0.1", 6379)]}, []),
        # Another RedisChannelLayer, without a timeout of its own, is cut every 5 s.
        ("8.1.0", {"default": [], "chat": ["redis://127.0.0.1:6379/1"]}, ["eventbus.W004"]),
        ("8.1.0", {"default": [], "chat": [("127.0.0.1", 6379)]}, ["eventbus.W004"]),
        ("8.1.0", {"default": [], "chat": []}, ["eventbus.W004"]),
        ("8.1.0", {"default": [], "chat": ["redis://127.0.0.1:6379/0?socket_timeout=10"]}, []),
        (
            "8.1.0",
            {"default": [], "chat": [{"address": "redis://h:6379", "socket_timeout": None}]},
            [],
        ),
        ("7.4.0", {"default": [], "chat": ["redis://127.0.0.1:6379/0"]}, []),
    ],
)
def test_redis_py_8_warns_about_other_core_layers_without_socket_timeout(
    monkeypatch, version, layers, expected
):
    import redis

    monkeypatch.setattr(redis, "__version__", version)
    channel_layers = {
        alias: {"BACKEND": CORE, "CONFIG": {"hosts": hosts}} for alias, hosts in layers.items()
    }
    with override_settings(CHANNEL_LAYERS=channel_layers):
        assert ids(run_checks()) == expected


def test_redis_py_8_does_not_warn_about_the_pubsub_layer(monkeypatch):
    """The pub/sub layer polls every 0.1 s: no read of it waits as long as the timeout."""
    import redis

    monkeypatch.setattr(redis, "__version__", "8.1.0")
    pubsub = {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": ["redis://127.0.0.1:6379"]},
    }
    with override_settings(CHANNEL_LAYERS={"default": pubsub, "chat": pubsub}):
        assert ids(run_checks()) == []


@pytest.mark.parametrize(
    ("origins", "expected"),
    [
        (["https://app.example.com", "http://localhost:8000"], []),
        (None, []),
        ("https://app.example.com", ["eventbus.E015"]),
        (["https://app.example.com/"], ["eventbus.E015"]),
        (["app.example.com"], ["eventbus.E015"]),
        ([42], ["eventbus.E015"]),
    ],
)
def test_allowed_origins_must_be_origins(origins, expected):
    with override_settings(EVENTBUS={**BASE, "WS_ALLOWED_ORIGINS": origins}):
        assert ids(run_checks()) == expected


def with_daphne():
    from django.conf import settings

    return override_settings(INSTALLED_APPS=["daphne", *settings.INSTALLED_APPS])


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (None, ["eventbus.W005"]),  # daphne's default: 1 MiB
        (0, ["eventbus.W005"]),  # no limit at all
        (64 * 1024, ["eventbus.W005"]),
        (16 * 1024, []),
    ],
)
def test_daphnes_runserver_message_limit_is_checked(limit, expected):
    extra = {} if limit is None else {"DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE": limit}
    with with_daphne(), override_settings(**extra):
        assert ids(run_checks()) == expected


def test_daphne_warns_at_deploy_only():
    with with_daphne(), override_settings(DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE=16 * 1024):
        assert ids(run_checks()) == []
        deploy = [m for m in checks.run_checks(include_deployment_checks=True)]
        assert "eventbus.W006" in ids(deploy)
    deploy = checks.run_checks(include_deployment_checks=True)
    assert "eventbus.W006" not in ids(deploy)


@pytest.mark.parametrize(
    ("backend", "sink", "expected"),
    [
        ("channels.layers.InMemoryChannelLayer", "eventbus.sinks.ChannelLayerSink", True),
        ("channels_redis.core.RedisChannelLayer", "eventbus.sinks.ChannelLayerSink", False),
        ("channels_redis.pubsub.RedisPubSubChannelLayer", "eventbus.sinks.ChannelLayerSink", False),
        ("channels.layers.InMemoryChannelLayer", None, False),  # nothing goes to a layer
    ],
)
def test_an_in_memory_layer_warns_at_deploy_only(backend, sink, expected):
    layers = {"default": {"BACKEND": backend, "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}}
    eventbus = {"CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"], "SINK": sink}
    with override_settings(CHANNEL_LAYERS=layers, EVENTBUS=eventbus):
        assert "eventbus.W010" not in ids(run_checks())
        deploy = ids(checks.run_checks(include_deployment_checks=True))
    assert ("eventbus.W010" in deploy) is expected


def test_log_on_sqlite_older_than_3_35_is_e027(monkeypatch):
    from django.db import connection

    from eventbus import checks as eventbus_checks

    assert "eventbus.E027" not in ids(run_checks())
    monkeypatch.setattr(eventbus_checks, "_sqlite_version", lambda: (3, 34, 1))
    # PostgreSQL has RETURNING whatever the sqlite3 module of this Python is.
    expected = ["eventbus.E027"] if connection.vendor == "sqlite" else []
    assert ids(run_checks()) == expected


SENTINELS = [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)]
PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"


@pytest.mark.parametrize("backend", [CORE, PUBSUB])
@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        # Every form channels_redis takes, Sentinel entries and several shards included.
        ([{"sentinels": SENTINELS, "master_name": "mymaster"}], []),
        ([{"sentinels": [list(a) for a in SENTINELS], "master_name": "m", "db": 1}], []),
        (["redis://a:6379", ("b", 6379), ["c", 6379], {"address": "redis://d:6379"}], []),
        ([{"sentinels": SENTINELS}], ["eventbus.E023"]),
        ([{"master_name": "mymaster"}], ["eventbus.E023"]),
        ([{"sentinels": [], "master_name": "m"}], ["eventbus.E024"]),
        ([{"sentinels": ["10.0.0.1:26379"], "master_name": "m"}], ["eventbus.E024"]),
        ([{"sentinels": ("10.0.0.1", 26379), "master_name": "m"}], ["eventbus.E024"]),
        ("redis://127.0.0.1:6379", ["eventbus.E024"]),
        (["redis://a:6379", 6379], ["eventbus.E024"]),
    ],
)
def test_channels_redis_hosts_are_checked(backend, hosts, expected):
    config = {"BACKEND": backend, "CONFIG": {"hosts": hosts, "capacity": 100}}
    if backend == CORE:  # W004 would speak of the other alias: give it its timeout
        hosts_ok = ["redis://127.0.0.1:6379?socket_timeout=10"]
    else:
        hosts_ok = ["redis://127.0.0.1:6379"]
    other = {"BACKEND": backend, "CONFIG": {"hosts": hosts_ok}}
    # On eventbus's own layer and on another alias alike.
    for layers in ({"default": config}, {"default": other, "chat": config}):
        with override_settings(CHANNEL_LAYERS=layers):
            found = [i for i in ids(run_checks()) if i != "eventbus.W004"]
            assert found == expected


def test_the_message_names_the_entry_and_what_it_lacks():
    layers = {
        "default": {"BACKEND": CORE, "CONFIG": {"hosts": ["redis://a", {"sentinels": SENTINELS}]}}
    }
    with override_settings(CHANNEL_LAYERS=layers):
        (message,) = [m for m in run_checks() if m.id == "eventbus.E023"]
    assert message.msg.startswith(
        "CHANNEL_LAYERS['default']['CONFIG']['hosts'][1] has 'sentinels' but no 'master_name'"
    )


def test_fewer_than_three_sentinels_warn_at_deploy_only():
    two = {"sentinels": SENTINELS[:2], "master_name": "m"}
    layers = {
        "default": {"BACKEND": PUBSUB, "CONFIG": {"hosts": [two, {**two, "sentinels": SENTINELS}]}}
    }
    with override_settings(CHANNEL_LAYERS=layers):
        assert ids(run_checks()) == []
        deploy = [
            m for m in checks.run_checks(include_deployment_checks=True) if m.id == "eventbus.W009"
        ]
    assert [m.msg.split(" lists")[0] for m in deploy] == [
        "CHANNEL_LAYERS['default']['CONFIG']['hosts'][0]"
    ]


def test_other_layers_hosts_are_not_read():
    layers = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"hosts": "x"}}
    }
    with override_settings(CHANNEL_LAYERS=layers):
        assert ids(run_checks()) == []


@pytest.mark.django_db(transaction=True)
def test_durable_runs_on_a_rollback_journal_warn_when_the_database_is_checked():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's journal modes")
    assert get_event_dispatcher().durable_handlers()  # tests.testapp declares some
    [warning] = [m for m in checks.run_checks(databases=["default"]) if m.id == "eventbus.W011"]
    assert "'delete' rollback journal" in warning.msg
    assert "PRAGMA journal_mode=WAL" in warning.hint
    assert "eventbus.W011" not in ids(run_checks())  # a database check: asked for only


@pytest.mark.django_db(transaction=True)
def test_durable_runs_on_wal_do_not_warn(wal):
    assert "eventbus.W011" not in ids(checks.run_checks(databases=["default"]))


@pytest.mark.django_db(transaction=True)
def test_no_durable_handlers_no_journal_warning(monkeypatch):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's journal modes")
    monkeypatch.setattr("eventbus.checks.get_event_dispatcher", EventDispatcher)
    assert "eventbus.W011" not in ids(checks.run_checks(databases=["default"]))
