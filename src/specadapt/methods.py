"""The method registry: a method is a named pair (draft-length policy, acceptance rule).

Policies register themselves with ``@register_method``; the CLI, the Python API
and the benchmark all list and build methods from this one registry. A method
string is ``name`` or ``name:value`` (first setting) or ``name:key=value,key=value``, optionally followed by
``+lookup`` or ``+lookup=N``: prompt lookup proposes tokens beside the draft model (:mod:`specadapt.lookup`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .errors import SpecAdaptError
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .acceptance import AcceptanceRule
    from .policies import DraftLengthPolicy


@dataclass(frozen=True)
class MethodEntry:
    name: str
    policy_cls: type
    summary: str
    needs_draft: bool
    # Builds the acceptance rule for a sampling setup and a policy instance; None = the lossless default.
    make_rule: Callable[[SamplingParams, Any], "AcceptanceRule"] | None


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(
    name: str,
    *,
    summary: str = "",
    needs_draft: bool = True,
    make_rule: Callable[[SamplingParams, Any], "AcceptanceRule"] | None = None,
) -> Callable[[type], type]:
    """Class decorator for a draft-length policy (a dataclass whose fields are its settings)."""

    def decorate(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].policy_cls is not cls:
            raise ValueError(f"method {name!r} is registered twice")
        _REGISTRY[name] = MethodEntry(name, cls, summary, needs_draft, make_rule)
        return cls

    return decorate


def lossless_rule(params: SamplingParams) -> "AcceptanceRule":
    """Greedy matching at temperature 0, lossless speculative sampling otherwise."""
    from .acceptance import GreedyAcceptance, SpeculativeSampling

    return GreedyAcceptance() if params.greedy else SpeculativeSampling()


@dataclass
class Method:
    """A ready-to-run method: a policy instance plus how to build its acceptance rule."""

    entry: MethodEntry
    policy: "DraftLengthPolicy"
    spec: str = field(default="")
    lookup: int = 0  # prompt lookup's match length (0: off): a looked-up token takes the place of a draft step

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def needs_draft(self) -> bool:
        return self.entry.needs_draft

    def rule(self, params: SamplingParams) -> "AcceptanceRule":
        if self.entry.make_rule is None:
            return lossless_rule(params)
        return self.entry.make_rule(params, self.policy)

    def describe(self, params: SamplingParams) -> dict:
        rule = self.rule(params)
        return {
            "method": self.name,
            "policy_settings": self.policy.settings(),
            **({"prompt_lookup": self.lookup} if self.lookup else {}),
            "acceptance": rule.name,
            "acceptance_settings": rule.settings(),
            "lossless": rule.lossless,
        }


def available_methods() -> dict[str, MethodEntry]:
    from . import policies  # noqa: F401  (registers every policy module)

    return dict(sorted(_REGISTRY.items()))


def _convert(value: str, annotation: Any, key: str, method: str) -> Any:
    # get_type_hints resolved the annotation; anything but a plain scalar type is taken as text.
    kind = annotation if annotation in (int, float, bool, str) else str
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return kind(value)
    except ValueError:
        raise SpecAdaptError(f"method {method!r}: setting {key}={value!r} is not a valid {kind.__name__}.") from None


def make_method(spec: "str | Method", **settings: Any) -> Method:
    """Build a method from a string such as ``fixed:4`` or ``confidence:threshold=0.3,max_k=8``.

    Keyword ``settings`` override those in the string (the API's way to pass e.g. ``head=...``).
    """
    if isinstance(spec, Method):
        return spec
    spec, *extras = spec.strip().split("+")
    lookup = _parse_lookup(extras, spec)
    methods = available_methods()
    name, _, arg_text = spec.strip().partition(":")
    if name not in methods:
        raise SpecAdaptError(f"unknown method {name!r}. Known methods: {', '.join(methods)}.")
    entry = methods[name]
    fields = {f.name: f for f in dataclasses.fields(entry.policy_cls) if f.init} if dataclasses.is_dataclass(
        entry.policy_cls
    ) else {}
    hints = typing.get_type_hints(entry.policy_cls) if fields else {}
    parsed: dict[str, Any] = {}
    for i, part in enumerate(p for p in arg_text.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        if not eq:  # positional: the first setting
            if i > 0 or not fields:
                raise SpecAdaptError(f"method {spec!r}: write settings as key=value (settings: {', '.join(fields) or 'none'}).")
            key, value = next(iter(fields)), part
        key = key.strip()
        if key not in fields:
            raise SpecAdaptError(
                f"method {name!r} has no setting {key!r}. Its settings: {', '.join(fields) or 'none'}."
            )
        if key in parsed:
            raise SpecAdaptError(f"method {spec!r}: setting {key!r} is given twice; give it once.")
        parsed[key] = _convert(value.strip(), hints.get(key, str), key, name)
    for key, value in settings.items():
        if key not in fields:
            raise SpecAdaptError(f"method {name!r} has no setting {key!r}. Its settings: {', '.join(fields) or 'none'}.")
        parsed[key] = value
    try:
        policy = entry.policy_cls(**parsed)
    except (ValueError, TypeError) as exc:
        raise SpecAdaptError(f"method {spec!r}: {exc}") from None
    canonical = name + (":" + ",".join(f"{k}={v}" for k, v in parsed.items()) if parsed else "")
    if lookup:
        if not entry.needs_draft or policy.needs_hidden:
            raise SpecAdaptError(
                f"method {name!r} cannot take +lookup: " + ("it drafts nothing." if not entry.needs_draft else
                "its policy reads the draft model's hidden state after every token, which a looked-up token has "
                "not got; use another method (adaedl, marginal, fixed:K, ...) with +lookup."))
        canonical += f"+lookup={lookup}"
    return Method(entry, policy, canonical, lookup)


HEAD_HELP = ("Acceptance-head folder (or built-in head name) for specdecpp methods that name none of their own "
             "(specdecpp:head=...); default: the head shipped for the default pair.")


def with_head(label: str, head: str | None, only_specdecpp: bool = False) -> str:
    """``label`` with ``head=HEAD`` added where it is a specdecpp method naming no head of its own (``--head``).
    ``only_specdecpp``: a ``head`` given for another method is an error, not ignored (one method, as ``generate``
    and ``serve`` take, rather than ``bench``'s list)."""
    if not head:
        return label
    name, _, rest = label.strip().partition(":")
    if name != "specdecpp":
        if only_specdecpp:
            raise SpecAdaptError(f"--head is the acceptance head of specdecpp, which method {label!r} does not read: "
                                 "drop --head, or use --method specdecpp.")
        return label
    if "head=" in rest:
        if only_specdecpp:
            raise SpecAdaptError(f"method {label!r} names its head already; give it once, in the method or in --head.")
        return label
    return f"specdecpp:head={head}" + (f",{rest}" if rest else "")


def _parse_lookup(extras: list[str], spec: str) -> int:
    """``["lookup"]`` -> the default match length, ``["lookup=N"]`` -> N, ``[]`` -> 0 (off)."""
    from .lookup import DEFAULT_NGRAM

    if not extras:
        return 0
    key, eq, value = extras[0].strip().partition("=")
    if len(extras) > 1 or key != "lookup" or (eq and not (value.strip().isdigit() and int(value) >= 1)):
        raise SpecAdaptError(f"method {spec + '+' + '+'.join(extras)!r}: after the method only +lookup or "
                             "+lookup=N (N >= 1, the match length) may follow.")
    return int(value) if eq else DEFAULT_NGRAM
