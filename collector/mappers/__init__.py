"""Map stage registry: the ordered mappers; the first that claims a span maps it.

Adding a convention is one module with a ``Mapper`` class and one line here (and its name in
storage/facts.py; docs/architecture.md, "Adding a framework"). Framework mappers come first
(they are recognized by scope or distinctive keys), then the native convention, then the generic GenAI
fallback. A span nobody claims is stored raw with stage ``other``.
"""

from __future__ import annotations

from collector.mappers.base import Mapper, SpanMapping
from collector.mappers.genai import GenAIMapper
from collector.mappers.livekit import LiveKitMapper
from collector.mappers.native import NativeMapper
from collector.mappers.openinference import OpenInferenceMapper
from collector.mappers.openllmetry import OpenLLMetryMapper
from collector.mappers.pipecat import PipecatMapper
from collector.items import SpanIn

__all__ = ["MAPPERS", "Mapper", "SpanMapping", "select_mapper"]

MAPPERS: tuple[Mapper, ...] = (
    PipecatMapper(),
    LiveKitMapper(),
    OpenInferenceMapper(),
    OpenLLMetryMapper(),
    NativeMapper(),
    GenAIMapper(),
)


_NATIVE = next(m for m in MAPPERS if isinstance(m, NativeMapper))


def select_mapper(span: SpanIn) -> Mapper | None:
    for mapper in MAPPERS:
        if mapper.claims(span):
            return mapper
    # A span no convention claims but that names its call in the native convention (``call.id`` & co., a
    # platform's own span names) is a native-convention span of stage other.
    if _NATIVE.names_a_call(span):
        return _NATIVE
    return None
