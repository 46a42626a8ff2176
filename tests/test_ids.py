"""Event ids: new UUIDv7s, and one reader for ids that arrive as text."""

import threading
from uuid import UUID, uuid4

import pytest

from eventbus.ids import parse_uuid, uuid7


def test_uuid7_is_unique_and_increasing_across_threads():
    results: list[list[UUID]] = [[] for _ in range(4)]

    def make(bucket: list[UUID]) -> None:
        bucket.extend(uuid7() for _ in range(20_000))

    threads = [threading.Thread(target=make, args=(bucket,)) for bucket in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for bucket in results for value in bucket]
    assert len(set(every)) == len(every)
    for bucket in results:
        assert bucket == sorted(bucket)
    assert all(value.version == 7 and value.variant == "specified in RFC 4122" for value in every)


def test_parse_uuid_reads_every_form_uuid_reads_and_names_what_it_refuses():
    value = uuid4()
    for text in (str(value), value.hex, f"{{{value}}}", f"urn:uuid:{value}", f" {value}\n"):
        assert parse_uuid(text) == value
    assert parse_uuid(value) is value
    for bad in ("", "not-a-uuid", str(value)[:-1], 12, None, b"x" * 16, True):
        with pytest.raises(ValueError, match="is not a valid UUID"):
            parse_uuid(bad)
