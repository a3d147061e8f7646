"""The facts contract (storage/facts.py) holds: what the derivation reads is declared and written by a mapper,
everything declared is read, and mappers emit only declared facts, of the declared type, from the mappers the
contract names."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from collector.cost import PriceTable
from collector.mappers import MAPPERS, select_mapper
from collector.mappers.native import call_facts
from collector.items import SpanIn
from collector.otlp.codec import iter_spans
from collector.pipeline import map_spans
from collector.simulate import generate_calls
from storage.facts import EMITTERS, FACTS
from storage.records import SpanRow
from tests.replay import RECORDINGS, load

ROOT = Path(__file__).resolve().parents[1]
# jsonb operators on facts: ->> and -> read one key, ? tests one; any other operator would read keys this test
# cannot see, so it fails the test until it is taught the operator.
_FACTS_USE = re.compile(r"\bfacts\b\s*(->>|->|\?\||\?&|\?|@>|<@|#>>|#>|-)?\s*('([^']*)')?")
_STATEMENT = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_COMMENT = re.compile(r"--[^\n]*")


def _sql_sources() -> list[Path]:
    """Every SQL the storage layer runs: its .sql files and the SQL strings of its Python modules."""
    return sorted((ROOT / "storage").rglob("*.sql")) + sorted((ROOT / "storage").rglob("*.py"))


def sql_reads() -> dict[str, set[str]]:
    """fact key → the statements that read it (``-- name:`` of a .sql file, else the file's path)."""
    reads: dict[str, set[str]] = defaultdict(set)
    unknown = []
    for path in _sql_sources():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py" and "facts->" not in text.replace(" ", "") and "facts?" not in text.replace(" ", ""):
            continue
        names = [(m.start(), m.group(1)) for m in _STATEMENT.finditer(text)]
        code = _COMMENT.sub(lambda m: " " * len(m.group(0)), text)   # same offsets, comments blanked
        for match in _FACTS_USE.finditer(code):
            operator, key = match.group(1), match.group(3)
            if operator is None:
                continue                     # the whole object (copied, tested for NULL)
            if operator not in ("->>", "->", "?") or key is None:
                unknown.append(f"{path.relative_to(ROOT)}: {match.group(0)!r}")
                continue
            statement = next((name for start, name in reversed(names) if start < match.start()),
                             str(path.relative_to(ROOT)))
            reads[key].add(statement)
    assert not unknown, f"facts read in a way this test does not understand: {unknown}"
    return reads


def _fact_constants(path: Path) -> list[tuple[str, ast.AST, ast.AST | None]]:
    """(key, node, parent) of every ``F.NAME`` of storage/facts.py used in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    import storage.facts as contract

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "F":
            key = getattr(contract, node.attr)
            found.append((key, node, parents.get(node)))
    return found


def _is_write(node: ast.AST, parent: ast.AST | None) -> bool:
    """``out[F.X] = …`` or ``{F.X: …}``: the fact is set here."""
    if isinstance(parent, ast.Subscript) and parent.slice is node:
        return isinstance(parent.ctx, ast.Store)
    return isinstance(parent, ast.Dict) and node in parent.keys


def python_reads() -> dict[str, set[str]]:
    """fact key → {"cost"} for the facts collector/cost.py reads (usage in, cost out)."""
    reads: dict[str, set[str]] = defaultdict(set)
    for key, node, parent in _fact_constants(ROOT / "collector" / "cost.py"):
        if not _is_write(node, parent):
            reads[key].add("cost")
    return reads


def written_in_code() -> set[str]:
    """Fact keys some writer sets: any use in a mapper module (mappers only build facts), a write elsewhere."""
    written = set()
    for path in sorted((ROOT / "collector" / "mappers").glob("*.py")):
        written.update(key for key, _, _ in _fact_constants(path))
    for path in (ROOT / "collector" / "pipeline.py", ROOT / "collector" / "cost.py"):
        written.update(key for key, node, parent in _fact_constants(path) if _is_write(node, parent))
    return written


def test_the_derivation_reads_only_declared_facts_that_some_mapper_writes():
    reads = sql_reads()
    assert len(reads) > 30 and reads["user_text"] == {"upsert_turns"}     # the parser sees the statements
    undeclared = sorted(set(reads) - set(FACTS))
    assert not undeclared, f"read by the derivation but not declared in storage/facts.py: {undeclared}"
    unwritten = sorted(set(reads) - written_in_code())
    assert not unwritten, f"read by the derivation but no mapper writes them: {unwritten}"
    assert all(FACTS[key].emitted_by for key in reads)


def test_every_declared_fact_is_read_where_the_contract_says():
    reads = sql_reads()
    for key, statements in python_reads().items():
        reads[key] |= statements
    unread = sorted(set(FACTS) - set(reads))
    assert not unread, f"declared but nothing reads them (drop them, or read them): {unread}"
    wrong = {key: (sorted(FACTS[key].read_by), sorted(reads[key])) for key in FACTS
             if set(FACTS[key].read_by) != reads[key]}
    assert not wrong, f"read_by differs from what reads them (declared, actual): {wrong}"


def test_writers_named_by_the_contract_exist():
    assert {m.name for m in MAPPERS} | {"call_attributes", "cost", "pipeline"} == set(EMITTERS)
    assert all(set(fact.emitted_by) <= set(EMITTERS) for fact in FACTS.values())
    assert all(fact.key.endswith("_us") <= (fact.type is int) for fact in FACTS.values())   # times are int µs


def _names_facts(node: ast.AST) -> bool:
    """The dicts mappers build facts in (``facts``, ``extra`` facts for a helper, cost's ``out``)."""
    return isinstance(node, ast.Name) and node.id in {"facts", "extra", "extra_facts", "out"}


def test_mappers_write_facts_with_the_contract_constants():
    """A fact key written as a string literal would bypass the contract (a typo is a new, unread fact)."""
    literal = []
    sources = [*sorted((ROOT / "collector" / "mappers").glob("*.py")), ROOT / "collector" / "pipeline.py",
               ROOT / "collector" / "cost.py"]
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            keys: list[ast.AST] = []
            if isinstance(node, ast.Dict):
                keys = [k for k in node.keys if k is not None]
            elif isinstance(node, ast.Subscript) and _names_facts(node.value):
                keys = [node.slice]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("get", "pop", "update") and _names_facts(node.func.value):
                keys = [*node.args[:1], *(ast.Constant(k.arg) for k in node.keywords if k.arg)]
            literal += [f"{path.relative_to(ROOT)}:{node.lineno} {k.value!r}" for k in keys
                        if isinstance(k, ast.Constant) and k.value in FACTS]
    assert not literal, literal


# --- what mappers really emit: recorded framework runs and simulated native / GenAI traffic ---------------------

@pytest.fixture(scope="module")
def corpus() -> list[SpanIn]:
    requests = []
    for folder in sorted(p.name for p in RECORDINGS.iterdir() if p.is_dir()):
        requests += [r for r in load(folder).requests if isinstance(r, trace_service_pb2.ExportTraceServiceRequest)]
    for call in generate_calls(150, seed=3, start=datetime(2025, 1, 1, tzinfo=timezone.utc)):
        requests += call.trace_requests
    return [span for request in requests for span in iter_spans(request) if isinstance(span, SpanIn)]


def _type_ok(value: object, kind: type) -> bool:
    if kind is float:
        return type(value) in (int, float)
    return type(value) is kind


def test_mappers_emit_declared_facts_of_the_declared_type(corpus):
    emitted: dict[str, set[str]] = defaultdict(set)
    wrong_type = set()
    for span in corpus:
        mapper = select_mapper(span)
        sources = [("call_attributes", call_facts(span))]
        if mapper is not None:
            sources.append((mapper.name, dict(mapper.map_span(span).facts)))
        for writer, facts in sources:
            for key, value in facts.items():
                emitted[key].add(writer)
                if key in FACTS and not _type_ok(value, FACTS[key].type):
                    wrong_type.add((writer, key, type(value).__name__))
    stored = defaultdict(set)
    for row in map_spans(corpus, prices=PriceTable.load()).records:
        if type(row) is SpanRow and row.facts:
            for key, value in orjson.loads(row.facts).items():
                stored[key].add(type(value).__name__)
                if key in FACTS and not _type_ok(value, FACTS[key].type):
                    wrong_type.add(("stored", key, type(value).__name__))
    assert len(emitted) > 30 and {"livekit", "pipecat", "native", "genai"} <= set().union(*emitted.values())
    assert not sorted(set(emitted) - set(FACTS)), "emitted but not declared"
    assert not sorted(set(stored) - set(FACTS)), "stored but not declared"
    assert not wrong_type
    undeclared_writers = {key: sorted(writers - set(FACTS[key].emitted_by)) for key, writers in emitted.items()
                          if writers - set(FACTS[key].emitted_by)}
    assert not undeclared_writers, f"emitted by writers the contract does not name: {undeclared_writers}"
