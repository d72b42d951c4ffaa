"""Typed settings blocks: each field of a settings dataclass carries its type and range, and one
parser checks a config block against them.

A field is declared once, with its default and what it accepts::

    k: int = integer(4, ge=2, why="a pair needs two candidates")

``parse(cls, block, key)`` builds ``cls`` from a config mapping. Every problem of the block (an
unknown key, a missing one, a value of the wrong type or out of range, and the class's own
cross-field rules, ``cls.cross_checks``) is one line of a single ``ConfigError`` in one shape::

    config key 'methods.tiny-sd15-spo.train.beta' is -1; it must be a number > 0

Values are kept as the YAML gave them (an int stays an int where a number is allowed): the parsed
object holds exactly what the unchecked one held, so no computation changes. A successful parse is
memoised by the block's content, so the config check at load and the job that trains share one
object instead of parsing the raw mapping again.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from spo.config_messages import suggest


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key.

    ``problems``: one message per problem (a block can have several)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


def show(value: Any) -> str:
    """A value as the YAML file spells it (null, true), strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


@dataclass(frozen=True)
class Spec:
    """What one settings field accepts."""

    kind: str                       # int | number | bool | text | string | choice | int_pair | list | mapping | block | any
    ge: float | None = None         # bounds (an interval may be open on either side)
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    multiple_of: int | None = None
    choices: tuple = ()
    nullable: bool = False
    required_keys: tuple = ()       # mapping: keys it must have
    block: type | None = None       # block: the settings dataclass of the nested mapping
    item: "Spec | None" = None      # list: what each item accepts
    min_items: int = 0              # list: length bounds
    max_items: int | None = None
    why: str = ""                   # one clause on where the rule comes from

    def describe(self) -> str:
        """'an integer >= 2', 'a number in [0, 1) or null', "one of 'mean', 'sum'", ..."""
        if self.kind in ("int", "number"):
            text = ("an integer" if self.kind == "int" else "a number") + self._interval()
            if self.multiple_of:
                text += f", a multiple of {self.multiple_of}"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "text":
            text = "a non-empty string"
        elif self.kind == "string":
            text = "a string"
        elif self.kind == "any":
            text = "any value"
        elif self.kind == "list":
            text = "a list of " + self._length() + "items, each " + self.item.describe()
        elif self.kind == "choice":
            text = "one of " + ", ".join(show(c) for c in self.choices)
        elif self.kind == "int_pair":
            text = "[lo, hi], integers with 0 <= lo <= hi"
        elif self.kind == "mapping":
            text = "a mapping" + (" with " + ", ".join(f"'{k}'" for k in self.required_keys)
                                  if self.required_keys else "")
        else:
            text = "a mapping of its own keys"
        if self.nullable:
            text += " or null"
        return text + (f" ({self.why})" if self.why else "")

    def _length(self) -> str:
        if self.max_items is not None and self.max_items == self.min_items:
            return f"{self.min_items} "
        if self.max_items is not None:
            return f"{self.min_items} to {self.max_items} "
        return f"at least {self.min_items} " if self.min_items else ""

    def _interval(self) -> str:
        lo = (f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None)
        hi = (f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None)
        if lo and hi:
            return f" in {lo}, {hi}"
        if lo:
            return f" {'>=' if self.ge is not None else '>'} {lo[1:]}"
        if hi:
            return f" {'<=' if self.le is not None else '<'} {hi[:-1]}"
        return ""

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is allowed, else why not (what follows 'is <value>; ')."""
        if value is None:
            return None if self.nullable else f"it must be {self.describe()}"
        if self.kind in ("int", "number"):
            return self._number_problem(value)
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"it must be {self.describe()}"
        if self.kind == "text":
            return None if isinstance(value, str) and value else f"it must be {self.describe()}"
        if self.kind == "string":
            return None if isinstance(value, str) else f"it must be {self.describe()}"
        if self.kind == "any":
            return None
        if self.kind == "list":
            ok = (isinstance(value, list) and len(value) >= self.min_items
                  and (self.max_items is None or len(value) <= self.max_items)
                  and all(v is not None and self.item.problem(v) is None for v in value))
            return None if ok else f"it must be {self.describe()}"
        if self.kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return None
            near = suggest(value, [c for c in self.choices if isinstance(c, str)]) if isinstance(value, str) else ""
            return f"it must be {self.describe()}{near}"
        if self.kind == "int_pair":
            ok = (isinstance(value, (list, tuple)) and len(value) == 2
                  and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                  and 0 <= value[0] <= value[1])
            return None if ok else f"it must be {self.describe()}"
        if self.kind == "mapping":
            if isinstance(value, dict) and all(k in value for k in self.required_keys):
                return None
            return f"it must be {self.describe()}"
        return None if isinstance(value, dict) else f"it must be {self.describe()}"

    def _number_problem(self, value: Any) -> str | None:
        want = f"it must be {self.describe()}"
        if isinstance(value, bool):  # YAML true / false are not numbers, though Python's bool is an int
            return f"{want}; true / false is not a number"
        if isinstance(value, str):
            return f"{want}; it is a string, not a number{_string_number_hint(value)}"
        if self.kind == "int" and not isinstance(value, int):
            return want
        if not isinstance(value, (int, float)):
            return want
        inside = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        if not inside or (self.multiple_of and value % self.multiple_of):
            return want
        return None


_EXPONENT = re.compile(r"^([+-]?\d+)(?:\.(\d*))?[eE]([+-]?)(\d+)$")


def _string_number_hint(text: str) -> str:
    """Why a number in the YAML became a string, and how to write it: PyYAML (YAML 1.1) reads a
    float only with a decimal point and a signed exponent, so ``1e-4`` is the string '1e-4'."""
    match = _EXPONENT.match(text.strip())
    if match:
        whole, frac, sign, exp = match.groups()
        fixed = f"{whole}.{frac or '0'}e{sign or '+'}{exp}"
        return (f" (YAML reads {text} as a string: a float needs a decimal point and a signed "
                f"exponent, write {fixed})")
    try:
        float(text)
    except ValueError:
        return ""
    return f" (write {text} without quotes)"


# --- field declarations ---------------------------------------------------------------------------

def _field(default: Any, spec: Spec, default_factory: Any = MISSING):
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec})


def integer(default: Any = MISSING, *, ge=None, gt=None, le=None, lt=None, multiple_of=None,
            nullable=False, why=""):
    return _field(default, Spec("int", ge, gt, le, lt, multiple_of, nullable=nullable, why=why))


def number(default: Any = MISSING, *, ge=None, gt=None, le=None, lt=None, nullable=False, why=""):
    return _field(default, Spec("number", ge, gt, le, lt, nullable=nullable, why=why))


def flag(default: Any = MISSING, *, why=""):
    return _field(default, Spec("bool", why=why))


def text(default: Any = MISSING, *, nullable=False, why=""):
    return _field(default, Spec("text", nullable=nullable, why=why))


def string(default: Any = MISSING, *, nullable=False, why=""):
    """Any string, the empty one too (a label)."""
    return _field(default, Spec("string", nullable=nullable, why=why))


def anything(default: Any = MISSING, *, why=""):
    """A value whose shape the JSON Schema checks (a paper-row reference: a mapping or a list)."""
    return _field(default, Spec("any", nullable=True, why=why))


def items(item: Spec, default: Any = MISSING, *, min_items=0, max_items=None, nullable=False, why=""):
    """A list whose every item is what ``item`` accepts (``Spec("text")``, ``Spec("int", ge=0)``);
    kept as the YAML list (a default list is given as a tuple and becomes a list)."""
    spec = Spec("list", item=item, min_items=min_items, max_items=max_items, nullable=nullable, why=why)
    if isinstance(default, tuple):
        return _field(MISSING, spec, default_factory=lambda: list(default))
    return _field(default, spec)


def choice(default: Any, choices: tuple, *, nullable=False, why=""):
    return _field(default, Spec("choice", choices=tuple(choices), nullable=nullable, why=why))


def int_pair(default: Any, *, why=""):
    return _field(default, Spec("int_pair", why=why))


def mapping(default_factory: Any = MISSING, *, required_keys: tuple = (), nullable=False, why=""):
    """A mapping kept as the config gave it (its inner shape: the JSON Schema, or the class's
    cross_checks). No ``default_factory``: required; ``nullable``: absent is None."""
    spec = Spec("mapping", required_keys=required_keys, nullable=nullable, why=why)
    if default_factory is MISSING:
        return _field(None if nullable else MISSING, spec)
    return _field(MISSING, spec, default_factory=default_factory)


def block(cls: type, *, why=""):
    """A nested settings mapping (``train.ddpo``): parsed with ``cls``, kept raw in the field."""
    return _field(None, Spec("block", nullable=True, block=cls, why=why))


def same_field(cls: type, name: str):
    """A field declared like ``cls.<name>`` (default and spec): one declaration for keys that two
    settings classes share (the sampler keys of ``train``)."""
    f = next(f for f in fields(cls) if f.name == name)
    return field(default=f.default, metadata=f.metadata)


# --- parsing --------------------------------------------------------------------------------------

def bad(key: str, value: Any, why: str) -> str:
    """The one message shape: ``config key '<key>' is <value>; <why>``."""
    return f"config key '{key}' is {show(value)}; {why}"


def problems(cls: type, block_: Any, key: str) -> list[str]:
    """Every problem of ``block_`` as the settings ``cls`` at config key ``key`` (none: valid)."""
    if not isinstance(block_, dict):
        return [bad(key, block_, "it must be a mapping of settings")]
    known = {f.name: f for f in fields(cls)}
    out = []
    for name in block_:
        if name not in known:
            out.append(f"config key '{key}.{name}' is not allowed{suggest(str(name), known)}; "
                       f"allowed: {', '.join(sorted(known))}")
    for name, f in known.items():
        spec = f.metadata.get("spec")
        if spec is None:
            continue
        if name not in block_:
            if f.default is MISSING and f.default_factory is MISSING:
                out.append(f"config key '{key}.{name}' is missing; it must be {spec.describe()}")
            continue
        value = block_[name]
        why = spec.problem(value)
        if why is not None:
            out.append(bad(f"{key}.{name}", value, why))
        elif spec.kind == "block" and value is not None:
            try:  # parsed (and memoised) now, so the trainer's request is no second parse
                parse(spec.block, value, f"{key}.{name}")
            except ConfigError as exc:
                out += exc.problems
    if not out and hasattr(cls, "cross_checks"):  # rules between fields, once each field is valid
        out += cls.cross_checks(block_, key)
    return out


def _build(cls: type, block_: dict) -> Any:
    # A deep copy: the object is memoised and shared, so it must not alias the config's mappings
    # (a caller that edits its config afterwards would change the settings of every later parse).
    values = copy.deepcopy(dict(block_))
    for f in fields(cls):  # [lo, hi] from YAML is a list; the settings hold tuples
        if f.name in values and f.metadata.get("spec", Spec("")).kind == "int_pair":
            values[f.name] = tuple(values[f.name])
    return cls(**values)


_PARSED: dict[tuple[type, str], Any] = {}  # (class, JSON of the block, keys in order) -> parsed object


def parse(cls: type, block_: Any, key: str) -> Any:
    """``cls`` built from the config mapping ``block_`` (None: every default), or a
    ``ConfigError`` listing every problem, each naming ``key.<field>``.

    Memoised by content: the config check at load parses each block, and a stage that asks again
    for the same block (``spo.config.train_settings``, ``TrainSettings.algorithm_settings``) gets
    that object back. The objects are frozen dataclasses, so sharing them is safe.
    """
    block_ = {} if block_ is None else block_
    try:  # key order kept: it is content (tables.replicates' order is the tables' row order)
        canon = json.dumps(block_, allow_nan=True)
    except (TypeError, ValueError):  # keys of mixed types: an error below, nothing to memoise
        canon = None
    if canon is not None and (cls, canon) in _PARSED:
        return _PARSED[(cls, canon)]
    found = problems(cls, block_, key)
    if found:
        raise ConfigError("\n".join(found), found)
    parsed = _build(cls, block_)
    if canon is not None:
        _PARSED[(cls, canon)] = parsed
    return parsed
