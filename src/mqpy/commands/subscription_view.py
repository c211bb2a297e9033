"""How a subscription is printed: a row of `mqpy subscriptions list` (and of `mqpy topics
show`), and the `name  value` lines of `mqpy subscriptions show`. Every value comes from
the server, so each is escaped before it reaches the terminal."""

from __future__ import annotations

from typing import Any

from mqpy.commands.terminal import shortened, text, visible

SUBSCRIPTION_COLUMNS = ("ID", "KIND", "URL", "TOPIC", "GROUP", "FILTER", "STATE", "FORMAT")
_URL_WIDTH = 50
_FILTER_WIDTH = 40


def subscription_row(subscription: dict[str, Any]) -> tuple[str, ...]:
    """A subscription as a row of SUBSCRIPTION_COLUMNS, server text escaped."""
    return (
        text(subscription.get("id")),
        text(subscription.get("kind")),
        shortened(text(subscription.get("url")), _URL_WIDTH),
        text(subscription.get("topic")),
        text(subscription.get("group")),
        shortened(filter_text(subscription.get("filter")), _FILTER_WIDTH),
        subscription_state(subscription),
        text(subscription.get("format")),
    )


def subscription_state(subscription: dict[str, Any]) -> str:
    """active, paused or disabled (a server from before `state` says only `paused`)."""
    state = subscription.get("state")
    if state is None:
        return "paused" if subscription.get("paused") else "active"
    return text(state)


def filter_text(conditions: Any) -> str:
    """A filter much as --filter spells it, one name's values joined by commas:
    `kind=created,paid region^=eu- test !draft`."""
    if not conditions:
        return "-"
    if not isinstance(conditions, dict):
        return visible(str(conditions))
    parts: list[str] = []
    for name, condition in conditions.items():
        if isinstance(condition, str):
            parts.append(f"{name}={condition}")
        elif isinstance(condition, list):
            parts.append(f"{name}=" + ",".join(str(value) for value in condition))
        elif isinstance(condition, dict) and "prefix" in condition:
            parts.append(f"{name}^={condition['prefix']}")
        elif isinstance(condition, dict) and "exists" in condition:
            parts.append(name if condition["exists"] else f"!{name}")
        else:
            parts.append(f"{name}:{condition}")
    return visible(" ".join(parts))


def subscription_fields(subscription: dict[str, Any]) -> list[tuple[str, str]]:
    """A subscription as `name value` lines, server text escaped."""
    policy = subscription.get("retry_policy")
    policy = policy if isinstance(policy, dict) else {}
    broker = "(the broker's)"

    def setting(value: Any, default: str = broker) -> str:
        return default if value is None else text(value)

    return [
        ("id", text(subscription.get("id"))),
        ("kind", text(subscription.get("kind"))),
        ("url", text(subscription.get("url"))),
        ("topic", text(subscription.get("topic"))),
        ("group", text(subscription.get("group"))),
        ("filter", filter_text(subscription.get("filter"))),
        ("state", subscription_state(subscription)),
        ("failing since", setting(subscription.get("failing_since"), "-")),
        ("disabled at", setting(subscription.get("disabled_at"), "-")),
        ("disabled because", setting(subscription.get("disabled_reason"), "-")),
        ("disable after seconds", setting(subscription.get("disable_after_seconds"))),
        ("format", text(subscription.get("format"))),
        ("ack deadline seconds", text(subscription.get("ack_deadline_seconds"))),
        ("max attempts", setting(policy.get("max_attempts"))),
        ("min backoff seconds", setting(policy.get("min_backoff_seconds"))),
        ("max backoff seconds", setting(policy.get("max_backoff_seconds"))),
        ("max age seconds", setting(policy.get("max_age_seconds"))),
        ("max concurrency", setting(subscription.get("max_concurrency"))),
        ("max per second", setting(subscription.get("max_per_second"), "(no limit)")),
        ("created at", text(subscription.get("created_at"))),
        ("connection id", text(subscription.get("connection_id"))),
    ]
