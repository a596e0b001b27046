"""One registry helper for everything carlib looks up by name: backbones, augmentation and TTA presets, studies.

A :class:`Registry` maps names to entries; an unknown name raises
:class:`~carlib.errors.UnknownNameError` that lists the known names, suggests the closest one,
and says how to add your own.
"""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from carlib.errors import ConfigError, UnknownNameError

__all__ = ["Registry", "closest_hint"]

Entry = TypeVar("Entry")


def closest_hint(name: object, known) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``known`` to ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[Entry]):
    """Named entries of one kind (``kind`` names it in messages, e.g. ``"backbone"``).

    ``how_to_add`` ends the unknown-name message, e.g. ``"add your own with
    carlib.register_study(StudySpec(...))"``.
    """

    def __init__(self, kind: str, how_to_add: str = ""):
        self.kind = kind
        self.how_to_add = how_to_add
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, entry: Entry, *, overwrite: bool = False) -> Entry:
        """Add ``entry`` under ``name``; an existing name needs ``overwrite=True``."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} needs a non-empty name; got {name!r}.")
        if name in self._entries and not overwrite:
            raise ConfigError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it.")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> Entry:
        """Remove ``name`` and return its entry (an unknown name raises :class:`UnknownNameError`)."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> Entry:
        """The entry of ``name``; an unknown name raises :class:`UnknownNameError` naming the known ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: object, *, alternatives: str = "") -> str:
        """The message for an unknown ``name``: the known names, the closest one, ``alternatives``, how to add one."""
        message = f"unknown {self.kind} {name!r}.{closest_hint(name, self._entries)} Known: {', '.join(self.names())}"
        if alternatives:
            message += f"; {alternatives}"
        if self.how_to_add:
            message += f"; {self.how_to_add}"
        return message + "."

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
