"""What counts as the channel layer's server being away, and how a failure on it is logged."""

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventbus.reconnect import RETRY_MAX, is_connection_error, log_layer_error, next_delay


@pytest.mark.parametrize(
    ("exc", "away"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (RedisConnectionError("Error 111 connecting"), True),  # not an OSError
        (RedisTimeoutError("timed out"), True),
        (TimeoutError("timed out"), True),
        (ValueError("a bug"), False),
        (KeyError("type"), False),
    ],
)
def test_is_connection_error(exc, away):
    assert is_connection_error(exc) is away


def test_a_server_away_is_one_warning_line_with_the_error(caplog):
    logger = logging.getLogger("eventbus.test")
    with caplog.at_level(logging.WARNING, logger="eventbus.test"):
        log_layer_error(logger, RedisConnectionError("Error 111"), "Joining %s failed", "chat")
    [record] = caplog.records
    assert (record.levelname, record.getMessage()) == ("WARNING", "Joining chat failed: Error 111")
    assert record.exc_info is None


def test_a_bug_is_an_error_with_its_traceback(caplog):
    logger = logging.getLogger("eventbus.test")
    try:
        {}["type"]
    except KeyError as exc:
        with caplog.at_level(logging.WARNING, logger="eventbus.test"):
            log_layer_error(logger, exc, "Joining %s failed", "chat")
    [record] = caplog.records
    assert (record.levelname, record.getMessage()) == ("ERROR", "Joining chat failed")
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_the_delay_doubles_up_to_its_cap():
    assert next_delay(0.1) == 0.2
    assert next_delay(RETRY_MAX) == RETRY_MAX
