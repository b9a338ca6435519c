"""Settings: defaults, provider availability, fail-fast errors naming the variable, secrets never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, OperatorRules, load_settings
from bot.providers.registry import PROVIDERS, ProviderEntry


def test_defaults_give_local_provider_only() -> None:
    settings = load_settings({})
    assert settings.available_providers == ("local",)
    assert settings.default_provider == "local"
    assert settings.providers["replicate"].base_url == "https://api.replicate.com/v1"
    assert settings.providers["bfl"].max_concurrency == 24
    assert settings.providers["wavespeed"].max_concurrency == 2


def test_keys_make_providers_available_and_aggregator_is_just_a_base_url() -> None:
    settings = load_settings({
        "REPLICATE_API_TOKEN": "r8_secret", "REPLICATE_BASE_URL": "https://agg.example/replicate/v1/",
        "BFL_API_KEY": "bfl-secret",
    })
    assert settings.available_providers == ("replicate", "bfl", "local")
    assert settings.default_provider == "replicate"
    assert settings.providers["replicate"].base_url == "https://agg.example/replicate/v1"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"POLL_INTERVAL": "fast"}, ["POLL_INTERVAL", "not a number"]),
        ({"JOB_DEADLINE": "1"}, ["JOB_DEADLINE", "out of range", "5"]),
        ({"MAX_ATTACHMENT_BYTES": "12x"}, ["MAX_ATTACHMENT_BYTES", "whole number"]),
        ({"REPLICATE_BASE_URL": "ftp://x"}, ["REPLICATE_BASE_URL", "http(s)"]),
        ({"DEFAULT_PROVIDER": "midjourney"}, ["DEFAULT_PROVIDER", "replicate, bfl, wavespeed, local"]),
        ({"DEFAULT_PROVIDER": "bfl"}, ["DEFAULT_PROVIDER", "BFL_API_KEY"]),
        ({"LOG_LEVEL": "loud"}, ["LOG_LEVEL", "DEBUG"]),
        ({"BFL_API_KEY": "two words"}, ["BFL_API_KEY", "white space"]),
        ({"DISCORD_DEV_GUILD_ID": "abc"}, ["DISCORD_DEV_GUILD_ID", "digits"]),
        ({"DM_ENABLED": "maybe"}, ["DM_ENABLED", "true or false"]),
        ({"DM_PROVIDERS": "local midjourney"}, ["DM_PROVIDERS", "midjourney", "replicate, bfl, wavespeed, local"]),
        ({"MEMBER_DAILY_QUOTA": "-1"}, ["MEMBER_DAILY_QUOTA", "out of range"]),
        ({"MAX_QUEUED_PER_MEMBER": "ten"}, ["MAX_QUEUED_PER_MEMBER", "whole number"]),
        ({"MAX_QUEUED_PER_SERVER": "-5"}, ["MAX_QUEUED_PER_SERVER", "out of range"]),
        ({"BLOCKED_TERMS_FILE": "/nonexistent/terms.txt"}, ["BLOCKED_TERMS_FILE", "cannot be read"]),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    for word in words:
        assert word in str(info.value)


def test_secrets_never_appear_in_repr_or_errors() -> None:
    settings = load_settings({"DISCORD_TOKEN": "tok-123456", "REPLICATE_API_TOKEN": "r8_abcdef"})
    text = repr(settings) + str(settings)
    assert "tok-123456" not in text and "r8_abcdef" not in text
    assert settings.require_discord_token().reveal() == "tok-123456"


def test_missing_discord_token_explains_where_to_get_it() -> None:
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        load_settings({}).require_discord_token()


def test_env_file_is_read_and_environment_wins(tmp_path, monkeypatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("POLL_INTERVAL=2.5\nJOB_DEADLINE=100\n")
    monkeypatch.setenv("JOB_DEADLINE", "200")
    settings = load_settings(env_file=env_file)
    assert settings.poll_interval == 2.5
    assert settings.job_deadline == 200


@pytest.mark.parametrize("entry", list(PROVIDERS.values()), ids=lambda entry: entry.name)
def test_each_provider_is_configured_by_its_registry_variables(entry: ProviderEntry) -> None:
    env = entry.env
    defaults = load_settings({}).providers[entry.name]
    assert (defaults.base_url, defaults.max_concurrency) == (env.default_base_url, env.default_concurrency)
    given = {env.concurrency: "7"}
    if env.key is not None:
        given[env.key] = "k-123"
    if env.base_url is not None:
        given[env.base_url] = "https://proxy.example/v9/"
    settings = load_settings(given)
    configured = settings.providers[entry.name]
    assert configured.max_concurrency == 7
    assert configured.base_url == ("https://proxy.example/v9" if env.base_url else env.default_base_url)
    assert entry.name in settings.available_providers
    assert (configured.api_key is None) == (env.key is None)


def test_env_example_documents_every_provider_variable_with_its_default() -> None:
    example = (Path(__file__).parents[2] / ".env.example").read_text()
    for entry in PROVIDERS.values():
        env = entry.env
        assert f"# {env.concurrency}={env.default_concurrency}\n" in example
        if env.key is not None:
            assert f"\n{env.key}=\n" in example
        if env.base_url is not None:
            assert f"# {env.base_url}={env.default_base_url}\n" in example


# -- operator-wide rules ------------------------------------------------------------------------------------


def test_operator_rules_default_to_paid_providers_off_in_dms_and_capped_queues() -> None:
    rules = load_settings({}).rules
    assert rules == OperatorRules()
    assert (rules.dm_enabled, rules.dm_providers, rules.member_daily_quota) == (True, ("local",), 0)
    assert (rules.max_queued_per_member, rules.max_queued_per_server, rules.blocked_terms) == (10, 100, ())


def test_operator_rules_are_read_from_the_environment(tmp_path: Path) -> None:
    terms = tmp_path / "terms.txt"
    terms.write_text("# the operator's list\ndragon\n\nstrip: watermark \nStrip:Signature\nDRAGON\n", "utf-8")
    rules = load_settings({
        "DM_ENABLED": "no", "DM_PROVIDERS": "BFL, local", "MEMBER_DAILY_QUOTA": "50", "MAX_QUEUED_PER_MEMBER": "0",
        "MAX_QUEUED_PER_SERVER": "7", "BLOCKED_TERMS_FILE": str(terms),
    }).rules
    assert rules == OperatorRules(
        dm_enabled=False, dm_providers=("bfl", "local"), member_daily_quota=50, max_queued_per_member=0,
        max_queued_per_server=7, blocked_terms=(("dragon", "block"), ("watermark", "strip"), ("Signature", "strip")),
    )
    assert load_settings({"DM_PROVIDERS": "none"}).rules.dm_providers == ()


def test_a_bad_blocked_term_names_the_file_and_line(tmp_path: Path) -> None:
    terms = tmp_path / "terms.txt"
    terms.write_text("dragon\nstrip: ***\n", "utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings({"BLOCKED_TERMS_FILE": str(terms)})
    assert "BLOCKED_TERMS_FILE" in str(info.value) and "line 2" in str(info.value) and "no letters" in str(info.value)


def test_an_oversized_blocked_terms_file_is_refused_at_start_up(tmp_path: Path) -> None:
    from bot.config import MAX_OPERATOR_TERMS

    terms = tmp_path / "terms.txt"
    terms.write_text("".join(f"term{n}\n" for n in range(MAX_OPERATOR_TERMS + 1)), "utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings({"BLOCKED_TERMS_FILE": str(terms)})
    assert f"more than {MAX_OPERATOR_TERMS} terms" in str(info.value), info.value
    terms.write_text("".join(f"term{n}\n" for n in range(MAX_OPERATOR_TERMS)), "utf-8")
    assert len(load_settings({"BLOCKED_TERMS_FILE": str(terms)}).rules.blocked_terms) == MAX_OPERATOR_TERMS


def test_env_example_and_readme_document_every_operator_rule() -> None:
    root = Path(__file__).parents[2]
    example, readme = (root / ".env.example").read_text(), (root / "README.md").read_text()
    for name in ("DM_ENABLED", "DM_PROVIDERS", "MEMBER_DAILY_QUOTA", "MAX_QUEUED_PER_MEMBER", "MAX_QUEUED_PER_SERVER",
                 "BLOCKED_TERMS_FILE"):
        assert f"# {name}=" in example and f"`{name}`" in readme, name
