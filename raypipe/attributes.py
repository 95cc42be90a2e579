"""Per-sample attribute prompts: ``method.attribute_from`` takes each sample's prompt from its metadata.

A dataset rebalanced on purpose (age, sex) says per sample what its faces should become. The source
``MEMBER:FIELD`` names a JSON member of the sample by its extension (``json`` for ``000123.json``,
``meta.json`` for ``000123.meta.json``) and a dotted path into its object (``attributes.prompt``):

- a string there is the sample's prompt; an empty string means no attribute prompt for that sample;
- a missing member, a missing field or ``null`` (at any depth) falls back to the job's
  ``method.attribute_prompt``;
- anything else (a number, a list, JSON that does not parse, a prompt over :data:`MAX_PROMPT_CHARS`)
  fails the sample with the member and the field named: a face is never anonymized with a prompt other
  than the one its metadata asked for.

A Parquet table's rows have no members: ``column:NAME`` takes each row's prompt from its string column
``NAME`` instead, with the same rules (``null`` falls back; a table without that column fails the
rows that have faces, naming the column).

Resolved prompts are plain strings, ``""`` for none. The prompt is read only for samples with faces to
anonymize, so a faceless sample's metadata is never a reason to hold it back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raypipe.io.tars import split_member_name

MAX_PROMPT_CHARS = 1000  # CLIP reads 77 tokens; a longer field is a caption, not an attribute prompt


class PromptError(ValueError):
    """A sample's metadata does not give a usable attribute prompt; the message names member and field."""


COLUMN_PREFIX = "column"


@dataclass(frozen=True)
class AttributeSource:
    """Where each sample's attribute prompt lies: a JSON member (by extension) and a path into it, or
    (``column``) a string column of a Parquet table."""

    member: str  # the member's extension, e.g. "json" or "meta.json"; "" for a column
    path: tuple[str, ...]  # keys from the JSON object down to the prompt
    column: str | None = None  # a Parquet table's column

    @classmethod
    def parse(cls, spec: str) -> AttributeSource:
        """``MEMBER:FIELD`` (``json:prompt``, ``meta.json:attributes.prompt``) or ``column:NAME``;
        ValueError says why not."""
        member, colon, field = spec.partition(":")
        if member == COLUMN_PREFIX and colon:
            if not field:
                raise ValueError(f"{spec!r}: name the table's column, e.g. 'column:prompt'")
            return cls("", (), column=field)
        path = tuple(field.split("."))
        if member.startswith("."):
            raise ValueError(f"{spec!r}: name the member's extension without its dot, e.g. {spec[1:]!r}")
        if not colon or not member.endswith("json") or not all(path):
            raise ValueError(
                f"{spec!r} is not MEMBER:FIELD with a JSON member's extension and a dotted field, e.g."
                " 'json:prompt' or 'meta.json:attributes.prompt'"
            )
        return cls(member, path)

    def __str__(self) -> str:
        if self.column is not None:
            return f"{COLUMN_PREFIX}:{self.column}"
        return f"{self.member}:{'.'.join(self.path)}"

    def prompt(
        self, members: Sequence[tuple[str, bytes]], default: str | None, column: tuple[str | None, str] = (None, "")
    ) -> str:
        """The sample's prompt from its members (``""``: none); ``default`` where the metadata gives none.
        For a column source, from ``column``: the row's value (a string or None) and, if the table
        cannot give one (no such column, not a string column), why not."""
        fallback = default or ""
        if self.column is not None:
            text, problem = column
            if problem:
                raise PromptError(f"{problem} (method.attribute_from: {self})")
            return self._checked(f"column {self.column!r}", text, fallback)
        found = next(((name, data) for name, data in members if split_member_name(name)[1] == self.member), None)
        if found is None:
            return fallback
        name, data = found
        try:
            value: Any = json.loads(data)
        except (ValueError, RecursionError) as exc:  # also: bad UTF-8, over-long integers, deep nesting
            raise PromptError(f"{name}: not JSON ({str(exc)[:200]}); method.attribute_from is {self}") from None
        for depth, key in enumerate(self.path):
            if value is None:
                return fallback
            if not isinstance(value, dict):
                where = ".".join(self.path[:depth]) or "the top level"
                raise PromptError(
                    f"{name}: {where} is {type(value).__name__}, not an object (method.attribute_from: {self})"
                )
            value = value.get(key)
        return self._checked(f"{name}: field {'.'.join(self.path)}", value, fallback)

    def _checked(self, where: str, value: Any, fallback: str) -> str:
        if value is None:
            return fallback
        if not isinstance(value, str):
            # The type, never the value: the audit record holds this message, and metadata is the user's.
            raise PromptError(f"{where} is {type(value).__name__}, not a string (method.attribute_from: {self})")
        if len(value) > MAX_PROMPT_CHARS:
            raise PromptError(
                f"{where} holds {len(value)} characters, over the {MAX_PROMPT_CHARS} an attribute prompt may have"
                f" (method.attribute_from: {self})"
            )
        return value
