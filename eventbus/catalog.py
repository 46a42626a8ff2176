"""The catalog: which event types exist and which payload model each one carries.

A project lists its catalogs in ``EVENTBUS['CATALOGS']``; each is a mapping from
a member of a ``str`` Enum to a frozen Pydantic model (or an :class:`EventSpec`
when the type needs options). ``AppConfig.ready()`` loads them; what fails to load
is kept in ``load_errors`` for the system checks instead of crashing start-up.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.utils.module_loading import import_string
from pydantic import BaseModel, ValidationError

from .exceptions import (
    CatalogConflictError,
    ImproperlyConfiguredCatalog,
    UnknownEventTypeError,
    UnreadablePayloadError,
)


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A payload model plus per-type options, for catalog entries that need them.

    ``log=False`` keeps high-volume events out of the event log;
    ``broadcast=False`` keeps them off the real-time channels;
    ``private_fields`` are payload fields never sent to a channel or browser.
    ``version`` is the payload's current version (stored with each row), and
    ``upcasters`` maps each older version N to a function turning a stored payload of
    version N (a dict) into version N + 1's shape: rows are read as ``version``.
    """

    payload: type[BaseModel]
    log: bool = True
    broadcast: bool = True
    private_fields: frozenset[str] = field(default_factory=frozenset)
    version: int = 1
    upcasters: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] = field(
        default_factory=dict
    )


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    member: enum.Enum
    spec: EventSpec
    source: str

    @property
    def name(self) -> str:
        return str(self.member.value)

    @property
    def payload_model(self) -> type[BaseModel]:
        return self.spec.payload

    def read_payload(self, stored: Any, version: int = 1) -> BaseModel:
        """A stored payload of ``version`` as the current model: upcast, then validated.

        The stored row is not rewritten. Raises :class:`UnreadablePayloadError` naming
        the step that failed: a version with no upcaster, one newer than the catalog's,
        an upcaster that raised, or a result the current model refuses.
        """
        current = self.spec.version
        if version > current:
            raise UnreadablePayloadError(
                f"{self.name!r}: the row is at payload version {version}, newer than the "
                f"catalog's {current} (was a deploy rolled back?)."
            )
        payload = stored
        for step in range(version, current):
            upcaster = self.spec.upcasters.get(step)
            if upcaster is None:
                raise UnreadablePayloadError(
                    f"{self.name!r}: no upcaster from payload version {step} to {step + 1}."
                )
            if not isinstance(payload, dict):
                raise UnreadablePayloadError(
                    f"{self.name!r}: the stored payload is a {type(payload).__name__}, "
                    "not a JSON object."
                )
            try:
                payload = upcaster(dict(payload))
            except Exception as exc:
                raise UnreadablePayloadError(
                    f"{self.name!r}: the upcaster from version {step} to {step + 1} raised "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        try:
            return self.spec.payload.model_validate(payload)
        except ValidationError as exc:
            raise UnreadablePayloadError(
                f"{self.name!r}: the stored payload (version {version}) does not fit "
                f"{_dotted(self.spec.payload)} (version {current}): {exc}"
            ) from exc


class Catalog:
    def __init__(self) -> None:
        self._entries: dict[str, CatalogEntry] = {}
        # (dotted path, what went wrong) for each catalog that could not be loaded.
        self.load_errors: list[tuple[str, ImportError | ImproperlyConfiguredCatalog]] = []

    def __contains__(self, event_type: object) -> bool:
        try:
            return _key(event_type) in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def resolve(self, event_type: object) -> CatalogEntry:
        """Return the entry for an enum member or its string value.

        Raises :class:`UnknownEventTypeError` for anything else.
        """
        try:
            # A str-Enum member hashes and compares like its value: one lookup on the hot path.
            return self._entries[event_type]  # type: ignore[index]
        except (KeyError, TypeError):
            pass
        try:
            return self._entries[_key(event_type)]
        except (KeyError, TypeError):
            raise UnknownEventTypeError(event_type) from None

    def register(self, mapping: Mapping[object, object], source: str = "<code>") -> None:
        """Add a mapping's entries; all or nothing.

        Raises :class:`ImproperlyConfiguredCatalog` for a key that is not a ``str``
        Enum member, a value that is not a payload model, or a type already
        registered with another model. Registering the same entry again is a no-op.
        """
        if not isinstance(mapping, Mapping):
            raise ImproperlyConfiguredCatalog(
                f"Catalog {source} is a {type(mapping).__name__}, not a mapping of "
                "event types to payload models."
            )
        staged: dict[str, CatalogEntry] = {}
        for member, value in mapping.items():
            if not (isinstance(member, enum.Enum) and isinstance(member, str)):
                raise ImproperlyConfiguredCatalog(
                    f"Catalog {source}: key {member!r} is not a member of a str Enum."
                )
            spec = value if isinstance(value, EventSpec) else EventSpec(value)  # type: ignore[arg-type]
            if not (isinstance(spec.payload, type) and issubclass(spec.payload, BaseModel)):
                raise ImproperlyConfiguredCatalog(
                    f"Catalog {source}: {member.value!r} maps to {spec.payload!r}, "
                    "not a Pydantic model class."
                )
            entry = CatalogEntry(member=member, spec=spec, source=source)
            existing = self._entries.get(entry.name) or staged.get(entry.name)
            if existing is not None and existing.spec.payload is not spec.payload:
                raise CatalogConflictError(
                    f"Event type {entry.name!r} is registered twice with different payload "
                    f"models: {_dotted(existing.spec.payload)} (from {existing.source}) and "
                    f"{_dotted(spec.payload)} (from {source})."
                )
            staged[entry.name] = entry
        self._entries.update(staged)

    def load(self, paths: tuple[str, ...]) -> None:
        """Import and register each dotted path; keep what fails in ``load_errors``."""
        for path in paths:
            try:
                self.register(import_string(path), source=path)
            except (ImportError, ImproperlyConfiguredCatalog) as exc:
                self.load_errors.append((path, exc))

    def clear(self) -> None:
        self._entries.clear()
        self.load_errors.clear()


def _key(event_type: object) -> str:
    if isinstance(event_type, enum.Enum):
        return str(event_type.value)
    if isinstance(event_type, str):
        return event_type
    raise TypeError(event_type)


def _dotted(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


catalog = Catalog()
"""The process-wide catalog, filled by ``AppConfig.ready()``."""
