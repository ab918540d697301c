"""Placement constraints: Swarm's grammar, in one place.

``compose/`` checks a stack file's ``deploy.placement.constraints`` with
:func:`parse_constraint` at load, the API checks every deployed spec with it,
and the scheduler's constraint filter evaluates the parsed
:class:`Constraint` — so a constraint that loads is one the scheduler can
evaluate, and one it cannot is refused at load with the reason (a
constraint that loaded but that the scheduler rejected used to leave its
tasks pending forever).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyswarm.errors import UsageError
from pyswarm.models import Node


class ConstraintError(UsageError):
    """A placement constraint that cannot be parsed.

    A ``UsageError`` because it comes from the user's stack file or command
    line; ``compose/`` and the API can call :func:`parse_constraint` to
    refuse it before it ever reaches the store.
    """


# Swarm's own grammar (swarmkit api/constraint): keys are dotted names,
# values may not contain characters that are or may become operators.
_KEY = re.compile(r"^[a-z_][a-z0-9\-_.]+$", re.IGNORECASE)
_VALUE = re.compile(r"^[a-z0-9:\-_\s.*()?+\[\]\\^$|/]+$", re.IGNORECASE)
_OPERATORS = ("==", "!=")
_FIXED_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
_LABEL_PREFIXES = ("node.labels.", "engine.labels.")

# The same machine is called x86_64 by the kernel and amd64 by Go and Docker;
# a constraint written either way should match a node reporting either way.
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm"}


@dataclass(frozen=True, slots=True)
class Constraint:
    """One parsed ``KEY==VALUE`` or ``KEY!=VALUE`` placement constraint."""

    key: str
    operator: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.operator}{self.value}"

    def matches(self, node: Node) -> bool:
        """Swarm's semantics: values compare case-insensitively, label names
        case-sensitively, and a missing label reads as the empty string (so
        ``node.labels.zone!=eu`` holds on a node without a zone)."""
        actual = _node_value(node, self.key)
        expected = self.value
        if self.key == "node.platform.arch":
            actual = _ARCH_ALIASES.get(actual.lower(), actual)
            expected = _ARCH_ALIASES.get(expected.lower(), expected)
        equal = actual.casefold() == expected.casefold()
        return equal if self.operator == "==" else not equal


def _node_value(node: Node, key: str) -> str:
    if key == "node.id":
        return node.id
    if key == "node.hostname":
        return node.hostname
    if key == "node.role":
        return node.role.value
    if key == "node.platform.os":
        return node.platform.get("os", "")
    if key == "node.platform.arch":
        return node.platform.get("arch", "")
    if key.startswith("node.labels."):
        return node.labels.get(key[len("node.labels."):], "")
    if key.startswith("engine.labels."):
        return node.engine_labels.get(key[len("engine.labels."):], "")
    raise ConstraintError(f"constraint key {key!r} is not supported")


def parse_constraint(text: str) -> Constraint:
    """Parse one constraint, raising :class:`ConstraintError` with the reason."""
    for op in _OPERATORS:
        if op in text:
            key, _, value = text.partition(op)
            key, value = key.strip(), value.strip()
            if not _KEY.match(key):
                raise ConstraintError(f"invalid constraint {text!r}: bad key {key!r}")
            if not (key in _FIXED_KEYS or any(
                key.startswith(p) and len(key) > len(p) for p in _LABEL_PREFIXES
            )):
                raise ConstraintError(
                    f"invalid constraint {text!r}: unknown constraint key {key!r}: use one of "
                    f"{', '.join(_FIXED_KEYS)}, node.labels.KEY or engine.labels.KEY"
                )
            if not _VALUE.match(value):
                raise ConstraintError(f"invalid constraint {text!r}: bad value {value!r}")
            return Constraint(key, op, value)
    raise ConstraintError(f"invalid constraint {text!r}: expected KEY==VALUE or KEY!=VALUE")


def parse_constraints(texts: list[str]) -> list[Constraint]:
    return [parse_constraint(t) for t in texts]


def parse_spread(deploy: dict[str, object]) -> tuple[str, ...]:
    """``placement.preferences`` as the keys to spread over, outermost
    first; raises :class:`ConstraintError` for a key no node can have."""
    placement = deploy.get("placement")
    prefs = placement.get("preferences") if isinstance(placement, dict) else None
    out = []
    for pref in prefs or ():
        key = str(pref.get("spread", "")).strip() if isinstance(pref, dict) else ""
        out.append(check_spread_key(key))
    return tuple(out)


def check_spread_key(key: str) -> str:
    """``key`` when a node can have it, else :class:`ConstraintError` with the reason."""
    if not (key in _FIXED_KEYS or any(key.startswith(p) and len(key) > len(p) for p in _LABEL_PREFIXES)):
        raise ConstraintError(f"invalid placement preference spread={key!r}: use node.labels.KEY, "
                              "engine.labels.KEY or one of " + ", ".join(_FIXED_KEYS))
    return key


def spread_value(node: Node, key: str) -> str:
    """The node's value for a spread key (``""`` when it has none)."""
    return _node_value(node, key)
