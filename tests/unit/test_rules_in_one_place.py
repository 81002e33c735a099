"""Each rule several services apply lives in shared/rules.py: a service that spells one out
again (its own list of stages, its own clock tolerance, its own currency check) fails here."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from shared import rules

SERVICES = Path(__file__).resolve().parents[2] / "services"
SOURCES = sorted(SERVICES.rglob("*.py"))

VOCABULARIES = {
    "lead stages": frozenset(rules.LEAD_STAGES),
    "deal stages": frozenset(rules.DEAL_STAGES),
    "open deal stages": frozenset(rules.OPEN_DEAL_STAGES),
    "closed deal stages": frozenset(rules.CLOSED_DEAL_STAGES),
    "revenue kinds": frozenset(get_args(rules.RevenueKind)),
}


def top_level_names(path: Path) -> set[str]:
    """What a module itself defines (not what it imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


RULE_NAMES = top_level_names(Path(rules.__file__))
# Names the rules had before they moved here: a sign that a copy came back.
RETIRED_NAMES = {"STAGES", "STAGE_RANK", "OPEN_STAGES", "CLOSED_STAGES", "FUTURE_TOLERANCE", "OpenStage"}


def string_collections(tree: ast.AST) -> list[tuple[int, frozenset[str]]]:
    """Every literal tuple, list, set or dict-key set of two or more strings, and every
    Literal[...] of strings, with its line."""
    found = []
    for node in ast.walk(tree):
        elements: list[ast.expr] | None = None
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            elements = node.elts
        elif isinstance(node, ast.Dict):
            elements = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Literal":
            elements = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if (
            elements
            and len(elements) >= 2
            and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elements)
        ):
            found.append((node.lineno, frozenset(e.value for e in elements)))  # type: ignore[attr-defined]
    return found


def defined_names(tree: ast.Module) -> list[tuple[int, str]]:
    """Names a module defines at its top level or in its classes: constants, settings fields,
    functions (the places a second copy of a rule would live; locals are not rules)."""
    names = []
    scopes: list[list[ast.stmt]] = [tree.body]
    while scopes:
        for node in scopes.pop():
            if isinstance(node, ast.ClassDef):
                scopes.append(node.body)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.append((node.lineno, node.name))
            elif isinstance(node, ast.Assign):
                names += [(node.lineno, t.id) for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.append((node.lineno, node.target.id))
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SERVICES)))
def test_no_service_spells_out_a_shared_rule(path: Path):
    tree = ast.parse(path.read_text())
    copies = [
        f"line {line}: the {what} ({sorted(values)}) are shared.rules'"
        for line, values in string_collections(tree)
        for what, vocabulary in VOCABULARIES.items()
        if values == vocabulary
    ]
    copies += [
        f"line {line}: {name} is defined in shared.rules"
        for line, name in defined_names(tree)
        if name in RULE_NAMES | RETIRED_NAMES
    ]
    copies += [
        f"line {line}: {name}: the clock skew is EMBUDO_CLOCK_SKEW_SECONDS (shared.settings)"
        for line, name in defined_names(tree)
        if "skew" in name.lower() or "tolerance" in name.lower()
    ]
    assert not copies, "\n".join(copies)


def test_the_check_finds_a_copy():
    # The scanner itself must see what it is meant to refuse.
    copy = ast.parse(
        'Stage = Literal["qualification", "proposal", "negotiation"]\n'
        "CLOSED = ('won', 'lost', 'rejected')\n"
        "def check_currency(value): ...\n"
        "clock_skew_seconds = 60\n"
    )
    assert frozenset(rules.OPEN_DEAL_STAGES) in {values for _, values in string_collections(copy)}
    assert frozenset(rules.CLOSED_DEAL_STAGES) in {values for _, values in string_collections(copy)}
    names = {name for _, name in defined_names(copy)}
    assert "check_currency" in names & RULE_NAMES and "clock_skew_seconds" in names
