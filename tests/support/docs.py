"""Running the documentation's examples as written: their fenced blocks, a shell
environment that reaches only 127.0.0.1, and shown answers compared with real ones once
what differs from run to run (ids, keys, secrets, times) is masked."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@dataclass(frozen=True)
class Block:
    language: str
    text: str


def fenced_blocks(page: str, *languages: str) -> list[Block]:
    """The page's fenced code blocks in order, those of `languages` (all if none)."""
    return [
        Block(match.group(1), match.group(2))
        for match in _FENCE.finditer(page)
        if not languages or match.group(1) in languages
    ]


def section(page: str, heading: str) -> str:
    """The text under `heading` (a whole Markdown heading line), to the next heading of
    the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = page.split("\n")
    start = lines.index(heading) + 1
    in_code = False
    for number in range(start, len(lines)):
        line = lines[number]
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(rf"#{{1,{level}}} ", line):  # not a shell comment
            return "\n".join(lines[start:number])
    return "\n".join(lines[start:])


def shell_env(**extra: str) -> dict[str, str]:
    """This process's environment without MQPY_* (the developer's own broker) and
    without proxies (requests go to 127.0.0.1), plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MQPY_") and name.lower() not in _PROXY_VARIABLES
    }
    return {**env, **extra}


# What differs from run to run, most specific first. A `bound` kind is one value used
# again later (an id, a key, a secret): the shown value stands for the real one from
# then on. The others (times, signatures) only have to have their shape.
_VARIABLE_KINDS: list[tuple[str, str, bool]] = [
    ("message", r"msg_[0-9a-f]{32}", True),
    ("secret", r"whsec_[A-Za-z0-9+/]+={0,2}", True),
    ("key", r"mqpy_[0-9a-f]{12}_[A-Za-z0-9_-]+", True),
    ("signature", r"v1,[A-Za-z0-9+/]+={0,2}", False),
    ("connection", r"(?<![\w.])\d{13,19}(?![\w.])", True),
    ("time", r"(?<![\w.])1\d{9}(?:\.\d+)?(?![\w.])", False),
    ("key_id", r"(?<![\w-])[0-9a-f]{12}(?![\w-])", True),
]
_ANY_VARIABLE = re.compile("|".join(f"(?P<{kind}>{rule})" for kind, rule, _ in _VARIABLE_KINDS))
_RULES = {kind: rule for kind, rule, _ in _VARIABLE_KINDS}
_BOUND = {kind for kind, _, bound in _VARIABLE_KINDS if bound}


@dataclass
class Bindings:
    """Shown values (ids, keys, secrets in the page) and the real ones they stand for."""

    real: dict[str, str] = field(default_factory=dict)

    def matches(self, shown: str, actual: str) -> bool:
        """Whether `actual` is `shown` with its variable parts changed, each shown value
        standing for one real value throughout; binds those seen for the first time."""
        pattern, groups = self._pattern(shown)
        found = re.fullmatch(pattern, actual, re.DOTALL)
        if found is None:
            return False
        for name, value in groups.items():
            self.real[value] = found.group(name)
        return True

    def _pattern(self, shown: str) -> tuple[str, dict[str, str]]:
        parts: list[str] = []
        groups: dict[str, str] = {}  # group name -> the shown value it captures
        names: dict[str, str] = {}
        position = 0
        for token in _ANY_VARIABLE.finditer(shown):
            parts.append(re.escape(shown[position : token.start()]))
            position = token.end()
            kind, value = token.lastgroup or "", token.group()
            if kind not in _BOUND:
                parts.append(f"(?:{_RULES[kind]})")
            elif value in self.real:
                parts.append(re.escape(self.real[value]))
            elif value in names:
                parts.append(f"(?P={names[value]})")
            else:
                names[value] = f"v{len(names)}"
                groups[names[value]] = value
                parts.append(f"(?P<{names[value]}>{_RULES[kind]})")
        parts.append(re.escape(shown[position:]))
        return "".join(parts), groups

    def apply(self, text: str) -> str:
        """`text` with every shown value bound so far replaced by its real one."""
        for shown in sorted(self.real, key=len, reverse=True):
            text = text.replace(shown, self.real[shown])
        return text
