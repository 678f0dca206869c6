"""The methods of a comparison: their names, what each runs with, the order workers take them.

Pure: no files, no processes. A method's name (``cpt``, ``default``, ``default-<ablation>``,
``default-law-<law>``, ``vt-paper``, ``vt-<rule>[-floor]``, ``dbl``, ``ratio``, ``reweighted``,
``frontier-<g>``, ``phase-<f>-<r1>-<r2>``) is its folder under ``runs/`` and parses into a
:class:`Method` (:mod:`megatron_velocitune.cli.compare_policies` describes each).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_velocitune.core.errors import ToolError
from megatron_velocitune.core.policy import DEFAULT_RISING_RULE, RISING_RULES, SCHEDULE_POLICY
from megatron_velocitune.laws.target_report import LAW_CHOICES

__all__ = [
    "DEFAULT_ABLATIONS",
    "DEFAULT_FIT",
    "DEFAULT_FRONTIER",
    "DEFAULT_METHODS",
    "LAW_METHOD_PREFIX",
    "QUICK_FRONTIER",
    "QUICK_METHODS",
    "VT_RULES",
    "Method",
    "Phased",
    "fit_law",
    "fit_name",
    "frontier_key",
    "law_fit_name",
    "parse_method",
    "run_order",
    "select_methods",
]

DEFAULT_FRONTIER = (0.1, 0.4, 0.6, 0.8)
DEFAULT_METHODS = (
    "cpt",
    "default",
    f"vt-{DEFAULT_RISING_RULE}",
    "vt-budget",
    "vt-tolerance",
    "vt-hold-initial",
    "vt-hold-initial-floor",
    "dbl",
    "ratio",
    "reweighted",
)
QUICK_METHODS = ("cpt", "default", "vt-hold-initial")
QUICK_FRONTIER = (0.1, 0.6)
VT_RULES = tuple(r for r in RISING_RULES if r != "refuse")
#: The name of the targets fitted with ``velocitune-fit-targets``' own default rule.
DEFAULT_FIT = "default"
#: ``default-law-<law>``: the shipped defaults on targets of another law.
LAW_METHOD_PREFIX = "default-law-"


def law_fit_name(law: str) -> str:
    """The name of the targets fitted with ``--law law`` (the fit tool's default rule)."""
    return f"law-{law}"


def fit_law(fit: str) -> Optional[str]:
    """The law of a fit's name (:func:`law_fit_name`), or None (the tool's default law)."""
    return fit[len("law-") :] if fit.startswith("law-") else None


@dataclass(frozen=True)
class Method:
    """One method of the comparison (see the module docstring for the names).

    Attributes:
        key (str): its name and folder under ``runs/``.
        policy (str): ``--velocitune-policy``.
        rule (Optional[str]): ``--velocitune-rising-rule`` and the targets fitted with it.
        floor (bool): with ``--velocitune-min-headroom``.
        share (Optional[float]): a frontier point: the replay domain's share.
        shipped (bool): the entry's and the fit tool's defaults: no rising rule, weight floor,
            headroom floor or initial-loss file; the targets of the fit tool's default rule.
        ablation (Tuple[str, ...]): entry flags that switch one guard of the default off
            (``default-<ablation>``, :data:`DEFAULT_ABLATIONS`).
        phase (Optional[Phased]): a phased blend (``phase-<f>-<r1>-<r2>``).
        law (Optional[str]): a shipped method whose targets come from ``velocitune-fit-targets
            --law`` this law (``default-law-<law>``) instead of the tool's default law.
    """

    key: str
    policy: str
    rule: Optional[str] = None
    floor: bool = False
    share: Optional[float] = None
    shipped: bool = False
    ablation: Tuple[str, ...] = ()
    phase: Optional["Phased"] = None
    law: Optional[str] = None

    @property
    def dynamic(self) -> bool:
        """Whether its blend reacts to the losses (a phased blend does not)."""
        return self.policy not in ("static", SCHEDULE_POLICY)

    @property
    def fit(self) -> Optional[str]:
        """The name of the targets it runs on (:func:`fit_name`), or None (no targets)."""
        if self.law is not None:
            return law_fit_name(self.law)
        if self.shipped:
            return DEFAULT_FIT
        return self.rule

    def label(self, tolerance: str, min_headroom: float, reweight_from: str = "") -> str:
        """The method's row name in the table."""
        if self.key == "cpt":
            return "CPT (static)"
        if self.key == "default":
            return "Velocitune, shipped defaults"
        if self.ablation:
            return f"Velocitune, defaults with {' '.join(self.ablation)}"
        if self.law is not None:
            return f"Velocitune, shipped defaults, {self.law}-law targets"
        if self.shipped:
            return f"Velocitune, {self.policy} policy (entry defaults)"
        if self.share is not None:
            return f"static, replay {self.share:.2f}"
        if self.phase is not None:
            return self.phase.label()
        if self.policy == "velocity":
            rule = f"tolerance {tolerance}" if self.rule == "tolerance" else self.rule
            return f"Velocitune, {rule}" + (f", floor {min_headroom:g}" if self.floor else "")
        return {
            "dbl": "DBL",
            "ratio": "Velocitune w/o target (ratio)",
            "reweighted": f"reweighted static ({reweight_from} time-avg)",
        }[self.key]


def parse_method(key: str) -> Method:
    """A method from its name.

    Raises:
        ToolError: an unknown name.
    """
    if key == "default":
        return Method(key, "velocity", shipped=True)
    if key.startswith(LAW_METHOD_PREFIX) and key[len(LAW_METHOD_PREFIX) :] in LAW_CHOICES:
        return Method(key, "velocity", shipped=True, law=key[len(LAW_METHOD_PREFIX) :])
    if key.startswith("default-") and key[len("default-") :] in DEFAULT_ABLATIONS:
        return Method(key, "velocity", shipped=True, ablation=DEFAULT_ABLATIONS[key[8:]])
    if key in ("paper", "vt-paper"):
        return Method("vt-paper", "paper", shipped=True)
    if key in ("cpt", "reweighted"):
        return Method(key, "static")
    if key == "dbl":
        return Method(key, "dbl", "budget")
    if key == "ratio":
        return Method(key, "ratio")
    if key.startswith("frontier-"):
        try:
            share = float(key[len("frontier-") :])
        except ValueError:
            share = -1.0
        if not 0.0 < share < 1.0:
            raise ToolError(f"method {key!r}: a frontier share must be in (0, 1)")
        return Method(key, "static", share=share)
    if key.startswith("phase-"):
        return Method(key, SCHEDULE_POLICY, phase=Phased.parse(key))
    if key.startswith("vt-"):
        rule, floor = key[3:], False
        if rule.endswith("-floor"):
            rule, floor = rule[: -len("-floor")], True
        if rule in VT_RULES:
            return Method(key, "velocity", rule, floor)
    raise ToolError(
        f"--methods {key}: unknown method; choose from cpt, default, "
        f"{', '.join('default-' + a for a in DEFAULT_ABLATIONS)}, "
        f"{LAW_METHOD_PREFIX}<law> with law in {list(LAW_CHOICES)}, vt-paper, dbl, ratio, "
        f"reweighted, vt-<rule>[-floor] with rule in {list(VT_RULES)}, phase-<f>-<r1>-<r2> "
        f"(frontier points come from --frontier)"
    )


#: The default with one guard off: which of them a result owes to.
DEFAULT_ABLATIONS = {
    "nobrake": ("--velocitune-brake-window", "0"),
    "nonoise": ("--velocitune-noise-multiple", "0"),
    # The other runaway guards in the brake's place.
    "cap": ("--velocitune-runaway-guard", "cap"),
    "anchored": ("--velocitune-runaway-guard", "anchored"),
}


@dataclass(frozen=True)
class Phased:
    """A two-phase blend: replay share ``first`` until fraction ``switch`` of the budget, then
    ``second``; the new domains share the rest in the CPT blend's ratio.

    Attributes:
        switch (float): the fraction of the iterations after which the second phase starts.
        first (Optional[float]): the first phase's replay share; None: CPT's own.
        second (float): the second phase's replay share.
    """

    switch: float
    first: Optional[float]
    second: float

    @classmethod
    def parse(cls, key: str) -> "Phased":
        """``phase-<f>-<r1>-<r2>`` (``r1`` a share or ``cpt``), e.g. ``phase-0.85-cpt-0.80``.

        Raises:
            ToolError: not three parts, or a number out of (0, 1).
        """
        parts = key[len("phase-") :].split("-")
        try:
            switch, second = float(parts[0]), float(parts[2])
            first = None if parts[1] == "cpt" else float(parts[1])
            ok = len(parts) == 3 and all(
                0.0 < v < 1.0 for v in (switch, second, 0.5 if first is None else first)
            )
        except (IndexError, ValueError):
            ok = False
        if not ok:
            raise ToolError(
                f"--methods {key}: a phased blend is phase-<f>-<r1>-<r2>: replay share r1 (a "
                "number or 'cpt') until fraction f of the budget, then r2, each in (0, 1)"
            )
        return cls(switch, first, second)

    def label(self) -> str:
        first = "CPT's" if self.first is None else f"{self.first:.2f}"
        return f"phased, replay {first} -> {self.second:.2f} after {self.switch:.0%}"


def frontier_key(share: float) -> str:
    return f"frontier-{share:.2f}"


def fit_name(rule: Optional[str]) -> str:
    """The name of the targets fitted with ``rule`` (None: the fit tool's default rule)."""
    return DEFAULT_FIT if rule is None else rule


def select_methods(
    keys: Sequence[str], shares: Sequence[float], reweight_from: str
) -> List[Method]:
    """CPT, the ``--methods`` (each once) and the frontier points, checked.

    Raises:
        ToolError: an unknown method, nothing to compare, or ``reweighted`` without its source.
    """
    methods: Dict[str, Method] = {}
    for k in ["cpt", *keys, *(frontier_key(g) for g in shares)]:
        m = parse_method(k)
        methods.setdefault(m.key, m)
    if len(methods) < 2:
        raise ToolError("--methods: nothing to compare with CPT (and --frontier is empty)")
    if "reweighted" in methods and reweight_from not in methods:
        raise ToolError(f"--reweight-from {reweight_from}: not among --methods {list(keys)}")
    return list(methods.values())


def run_order(methods: Sequence[Method], reweight_from: str) -> List[Method]:
    """The order workers take the methods in: ``default``, the ``--reweight-from`` method, the
    frontier, then the rest, ``reweighted`` (it needs every ``--reweight-from`` run) and CPT
    last.
    """
    return sorted(
        methods,
        key=lambda m: (
            m.key == "cpt",
            m.key == "reweighted",
            m.key != "default",
            m.key != reweight_from,
            m.share is None,
        ),
    )
