"""A small Dockerfile reader, for the one stage no test can build: `source`, whose base image only a
registry provides (test_dockerfile.py). Everything else about the image is checked on the image itself.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field


@dataclass
class Instruction:
    keyword: str  # upper-case: FROM, RUN, COPY, ...
    args: str  # the rest of the (continuation-joined) line


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """`--a=b --c=d rest` -> ({"a": "b", "c": "d"}, "rest")."""
    flags = {}
    rest = args.strip()
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        k, _, v = word[2:].partition("=")
        flags[k] = v
        rest = rest.strip()
    return flags, rest


def copy_parts(ins: Instruction) -> tuple[dict[str, str], list[str], str]:
    """COPY's (flags, sources, destination)."""
    flags, rest = split_flags(ins.args)
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return flags, words[:-1], words[-1]


def logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker too
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            _, rest = split_flags(args)
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"instruction before the first FROM: {line}")
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return stages


def global_args(text: str) -> dict[str, str]:
    """The `ARG NAME=default` lines before the first FROM (the ones a FROM line can use)."""
    out = {}
    for line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            break
        if keyword.upper() == "ARG":
            name, _, default = args.strip().partition("=")
            out[name] = default
    return out
