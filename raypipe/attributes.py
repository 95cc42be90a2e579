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


@dataclass(frozen=True)
class AttributeSource:
    """Where each sample's attribute prompt lies: a JSON member (by extension) and a path into it."""

    member: str  # the member's extension, e.g. "json" or "meta.json"
    path: tuple[str, ...]  # keys from the JSON object down to the prompt

    @classmethod
    def parse(cls, spec: str) -> AttributeSource:
        """``MEMBER:FIELD`` (``json:prompt``, ``meta.json:attributes.prompt``); ValueError says why not."""
        member, colon, field = spec.partition(":")
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
        return f"{self.member}:{'.'.join(self.path)}"

    def prompt(self, members: Sequence[tuple[str, bytes]], default: str | None) -> str:
        """The sample's prompt from its members (``""``: none); ``default`` where the metadata gives none."""
        fallback = default or ""
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
        if value is None:
            return fallback
        if not isinstance(value, str):
            # The type, never the value: the audit record holds this message, and metadata is the user's.
            raise PromptError(
                f"{name}: field {'.'.join(self.path)} is {type(value).__name__}, not a string"
                f" (method.attribute_from: {self})"
            )
        if len(value) > MAX_PROMPT_CHARS:
            raise PromptError(
                f"{name}: field {'.'.join(self.path)} holds {len(value)} characters, over the"
                f" {MAX_PROMPT_CHARS} an attribute prompt may have (method.attribute_from: {self})"
            )
        return value
