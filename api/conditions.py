"""Conditional requests (RFC 9110): a todo's ETag, and the If-Match and If-None-Match naming it."""

import re
from typing import Annotated

from fastapi import Header

from db.todos import Versions

# Our tags are a todo's version in quotes: "1", "2", ... A version fits a bigint.
OUR_TAG = re.compile(r'(W/)?"([1-9][0-9]{0,17})"')


def etag(version: int) -> str:
    return f'"{version}"'


def _tags(header: str) -> list[tuple[bool, int]]:
    """(weak, version) for each of our tags in a list of entity tags. Anything else in the
    list cannot name a version of ours, so it is left out: it matches nothing."""
    found = (OUR_TAG.fullmatch(part.strip()) for part in header.split(","))
    return [(bool(tag[1]), int(tag[2])) for tag in found if tag]


# The two headers are handler parameters rather than dependencies: FastAPI's cost per
# dependency is a sizeable part of a request's CPU (docs/performance.md).
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description="Change the todo only if its ETag is one of these (or `*`: if it"
        " exists); otherwise 412 and nothing changes.",
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        description="304 Not Modified, without a body, when the todo's ETag is one of these"
        " (or `*`).",
    ),
]


def versions(if_match: str | None) -> Versions:
    """The versions a write may change: None for any (no header, or `*`). Comparison is
    strong, so a weak tag never matches."""
    if if_match is None or if_match.strip() == "*":
        return None
    return [version for weak, version in _tags(if_match) if not weak]


class Cached:
    """If-None-Match on a read: the versions the client already has."""

    def __init__(self, header: str | None):
        self.any = header is not None and header.strip() == "*"
        self.versions = {version for _, version in _tags(header or "")}

    def has(self, version: int) -> bool:
        # Weak comparison: W/"3" names version 3 as well as "3" does.
        return self.any or version in self.versions
