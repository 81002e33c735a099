"""EMBUDO_API_TOKENS: named, scoped entries, the bare form, and what start-up refuses."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from shared.auth import ApiToken, find_token, parse_api_tokens, warn_about_bare_tokens
from shared.settings import DEV_API_TOKEN, ServiceSettings, split_csv


def parse(value: str) -> tuple[ApiToken, ...]:
    return parse_api_tokens(split_csv(value))


def test_entries_are_name_token_scopes_and_scopes_follow_their_entry():
    tokens = parse("dashboard:d-1:read, crm:c:2:read,write, dpo:p-3:privacy")
    assert tokens == (
        ApiToken("dashboard", "d-1", frozenset({"read"})),
        ApiToken("crm", "c:2", frozenset({"read", "write"})),  # a colon inside the token is kept
        ApiToken("dpo", "p-3", frozenset({"privacy"})),
    )


def test_a_bare_token_still_works_with_every_scope_and_is_warned_about(caplog):
    tokens = parse("old-secret, crm:c-2:write")
    assert tokens[0] == ApiToken("token-1", "old-secret", frozenset({"read", "write", "privacy"}), bare=True)
    with caplog.at_level(logging.WARNING, logger="shared.auth"):
        warn_about_bare_tokens(tokens)
    assert [r.getMessage() for r in caplog.records] == [
        "API token token-1 has no name and scopes, so it has full access: configure name:token:scopes"
    ]
    # a scope name after a bare token is another bare token, not a scope of it
    assert [t.name for t in parse("old-secret, read")] == ["token-1", "token-2"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("crm:c-2:admin", "unknown scope 'admin'"),
        ("crm::read", "expected name:token:scopes"),
        (":c-2:read", "expected name:token:scopes"),
        ("crm:c-2:read, crm:c-3:write", "names must be unique"),
    ],
)
def test_a_malformed_entry_stops_start_up(value, message):
    with pytest.raises(ValidationError, match=message):
        ServiceSettings(api_tokens=value)


def test_the_dev_token_is_named_dev_with_every_scope():
    [dev] = ServiceSettings(env="dev").tokens
    assert (dev.name, dev.secret, dev.scopes, dev.bare) == ("dev", DEV_API_TOKEN, {"read", "write", "privacy"}, False)


def test_find_token_matches_the_whole_secret_only():
    tokens = parse("a:alpha:read, b:beta:write")
    assert find_token("beta", tokens).name == "b"
    assert find_token("bet", tokens) is None
    assert find_token("", tokens) is None
    assert find_token(None, tokens) is None
