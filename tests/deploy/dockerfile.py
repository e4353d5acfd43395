"""A small Dockerfile reader: enough to check the Dockerfile without a Docker engine.

Our machines and CI have no engine (issue 3), so the image is never built here. What can drift
silently is checked from the text instead: the builder runs the same `make release` as CI, the
runtime stage has what the task definition relies on (/secrets owned by the sidecar's uid, the
binary at the path the health check names, exec forms, the env default for the output dir).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field


@dataclass
class Instruction:
    keyword: str  # upper-case: FROM, RUN, COPY, ...
    args: str  # the rest of the (continuation-joined) line

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN/HEALTHCHECK CMD, else None."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            _, text = split_flags(text)
            if not text.startswith("CMD"):
                return None
            text = text[3:].strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in self.all("ENV"):
            words = shlex.split(i.args)
            if words and "=" not in words[0]:  # legacy `ENV KEY value`
                out[words[0]] = " ".join(words[1:])
                continue
            for w in words:
                k, _, v = w.partition("=")
                out[k] = v
        return out


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
