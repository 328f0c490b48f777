"""Why a YAML file that parses was still refused: a tag (``!!python/...``, ``!custom``) that safe loading never builds.

Config files are read with ``yaml.safe_load``, which builds plain values only; a tag that asks for a Python object
is refused on purpose (it could run code), so it must not be reported as a syntax error.
"""

from __future__ import annotations

import re

import yaml

_STANDARD_PREFIX = "tag:yaml.org,2002:"  # how PyYAML spells the `!!` shorthand
_TAG_IN_PROBLEM = re.compile(r"constructor for the tag '(?P<tag>[^']*)'")


def refused_tag(error: yaml.YAMLError) -> str | None:
    """'uses the ... tag !!x at line N, which advtrain ...' for a tag safe_load cannot build; None otherwise."""
    if not isinstance(error, yaml.constructor.ConstructorError):
        return None
    match = _TAG_IN_PROBLEM.search(error.problem or "")
    if match is None:
        return None
    tag = match["tag"]
    if tag.startswith(_STANDARD_PREFIX):
        tag = "!!" + tag.removeprefix(_STANDARD_PREFIX)
    mark = error.problem_mark
    at = f" at line {mark.line + 1}" if mark is not None else ""
    if tag.startswith("!!python/"):
        return f"uses the Python-object tag {tag}{at}, which advtrain refuses for safety (loading it could run code)"
    return f"uses the tag {tag}{at}, which advtrain does not read (only plain YAML values)"
