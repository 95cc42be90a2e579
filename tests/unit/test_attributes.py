"""Per-sample attribute prompts: where ``method.attribute_from`` finds each sample's prompt, and the
samples whose metadata cannot give one."""

from __future__ import annotations

import json

import pytest

from raypipe.attributes import MAX_PROMPT_CHARS, AttributeSource, PromptError
from raypipe.config import ConfigError, MethodConfig


def members(meta: object, ext: str = "json") -> list[tuple[str, bytes]]:
    data = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return [("s/00001.jpg", b"\xff\xd8"), (f"s/00001.{ext}", data), ("s/00001.txt", b"caption")]


def test_the_prompt_comes_from_the_named_field() -> None:
    source = AttributeSource.parse("json:attributes.prompt")
    assert source.prompt(members({"attributes": {"prompt": "an elderly man"}}), "a child") == "an elderly man"
    assert source.prompt(members({"attributes": {"prompt": ""}}), "a child") == ""  # asked for none


@pytest.mark.parametrize(
    "meta",
    [{"attributes": {}}, {"attributes": {"prompt": None}}, {"attributes": None}, {"other": 1}],
    ids=["missing", "null", "null-above", "absent"],
)
def test_a_sample_without_the_field_gets_the_job_prompt(meta: object) -> None:
    source = AttributeSource.parse("json:attributes.prompt")
    assert source.prompt(members(meta), "a child") == "a child"
    assert source.prompt(members(meta), None) == ""


def test_a_sample_without_the_member_gets_the_job_prompt() -> None:
    assert AttributeSource.parse("meta.json:prompt").prompt(members({"prompt": "x"}), "a child") == "a child"
    assert AttributeSource.parse("meta.json:prompt").prompt(members({"prompt": "x"}, "meta.json"), None) == "x"


@pytest.mark.parametrize(
    ("meta", "says"),
    [
        ({"attributes": {"prompt": 42}}, "field attributes.prompt is int, not a string"),
        ({"attributes": {"prompt": {"name": "Jane Doe"}}}, "field attributes.prompt is dict, not a string"),
        ({"attributes": ["a"]}, "attributes is list, not an object"),
        ([1, 2], "the top level is list, not an object"),
        (b"{not json", "s/00001.json: not JSON"),
        (b"\xff\xfe", "s/00001.json: not JSON"),
        (b"[" * 100_000, "s/00001.json: not JSON"),  # deeper than the parser goes
        (b'{"attributes": %s}' % (b"1" * 5000), "s/00001.json: not JSON"),  # an integer over Python's limit
        ({"attributes": {"prompt": "x" * (MAX_PROMPT_CHARS + 1)}}, f"holds {MAX_PROMPT_CHARS + 1} characters"),
    ],
)
def test_metadata_that_gives_no_usable_prompt_is_an_error_naming_member_and_field(meta: object, says: str) -> None:
    with pytest.raises(PromptError, match=r"json:attributes\.prompt") as caught:
        AttributeSource.parse("json:attributes.prompt").prompt(members(meta), "a child")
    assert says in str(caught.value)
    assert "Jane" not in str(caught.value) and len(str(caught.value)) < 400  # the audit gets no metadata


@pytest.mark.parametrize("spec", ["json", "txt:prompt", "json:", ":prompt", "json:a..b", "json:.a"])
def test_a_bad_source_is_refused_by_the_config(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"method\.attribute_from: .* is not MEMBER:FIELD"):
        MethodConfig(attribute_from=spec)


def test_a_member_named_with_its_dot_is_refused_not_silently_missed() -> None:
    with pytest.raises(ConfigError, match=r"without its dot, e\.g\. 'json:prompt'"):
        MethodConfig(attribute_from=".json:prompt")


def test_a_classic_method_refuses_a_prompt_source() -> None:
    with pytest.raises(ConfigError, match="the blur method has no attribute prompt"):
        MethodConfig(name="blur", attribute_from="json:prompt")
    assert MethodConfig(attribute_from="json:prompt").attribute_source == AttributeSource("json", ("prompt",))
    assert MethodConfig().attribute_source is None


def test_a_column_source_reads_a_tables_row_value() -> None:
    source = AttributeSource.parse("column:prompt")
    assert source.column == "prompt" and str(source) == "column:prompt"
    assert source.prompt([], "a child", ("an elderly man", "")) == "an elderly man"
    assert source.prompt([], "a child", (None, "")) == "a child"
    with pytest.raises(
        PromptError, match=r"^the table has no column 'prompt' \(method.attribute_from: column:prompt\)$"
    ):
        source.prompt([], "a child", (None, "the table has no column 'prompt'"))
    with pytest.raises(PromptError, match="over the 1000 an attribute prompt may have"):
        source.prompt([], None, ("x" * 1001, ""))
    with pytest.raises(ValueError, match="name the table's column"):
        AttributeSource.parse("column:")
