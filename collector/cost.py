"""Map stage helper: the price table (design §7) and the per-span cost facts the pipeline adds.

``collector/prices.yaml`` ships versioned defaults; the ``prices_file`` setting names a YAML file deep-merged
over them. The Collector loads one ``PriceTable`` at startup and passes it down (Ingest → ``map_spans`` →
``cost_facts``); nothing here is global, so two collectors in one process (the tests) price independently.
Every price comes from that one table: per span, ``cost_facts`` turns stage, provider, model and usage facts
into ``cost_stt`` / ``cost_llm`` / ``cost_tts`` facts, which the derivation sums per call; the telephony rate
per direction goes to the ``telephony_rates`` table (``telephony_rows``), which the derivation multiplies by
the ended call's duration (it alone knows it). A cost the producer reports (``call.cost``, OpenInference
``llm.cost.*``) is set by the mapper and never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from storage import facts as F

__all__ = ["PriceTable", "DEFAULT_PRICES_PATH", "cost_facts"]

DEFAULT_PRICES_PATH = Path(__file__).with_name("prices.yaml")
_PER_MILLION = 1_000_000.0


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _lower_keys(section: Any) -> dict[str, Any]:
    if not isinstance(section, Mapping):
        return {}
    return {str(k).strip().lower(): (_lower_keys(v) if isinstance(v, Mapping) else v) for k, v in section.items()}


def _normalize_model(model: str | None) -> str | None:
    if not model:
        return None
    value = model.strip().lower()
    if value.startswith("models/"):
        value = value[len("models/"):]
    return value.rsplit("/", 1)[-1] or None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


@dataclass(frozen=True)
class PriceTable:
    version: str = "none"
    currency: str = "USD"
    aliases: dict[str, str] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)
    stt: dict[str, Any] = field(default_factory=dict)
    tts: dict[str, Any] = field(default_factory=dict)
    telephony: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_mapping(cls, document: Mapping[str, Any], *, source: str = "") -> "PriceTable":
        aliases = {str(k).lower(): str(v).lower() for k, v in (document.get("aliases") or {}).items()}
        return cls(
            version=str(document.get("version", "none")), currency=str(document.get("currency", "USD")),
            aliases=aliases, llm=_lower_keys(document.get("llm")), stt=_lower_keys(document.get("stt")),
            tts=_lower_keys(document.get("tts")), telephony=_lower_keys(document.get("telephony")), source=source,
        )

    @classmethod
    def load(cls, override_path: str | Path | None = None) -> "PriceTable":
        """The shipped defaults, deep-merged with ``override_path`` when given (ValueError if unreadable)."""
        document = yaml.safe_load(DEFAULT_PRICES_PATH.read_text()) or {}
        source = str(DEFAULT_PRICES_PATH)
        if override_path:
            try:
                override = yaml.safe_load(Path(override_path).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ValueError(f"cannot read prices_file {override_path}: {exc}") from exc
            if not isinstance(override, Mapping):
                raise ValueError(f"prices_file {override_path} must be a YAML mapping")
            document = _merge(document, override)
            source = f"{source} + {override_path}"
        return cls.from_mapping(document, source=source)

    # --- lookup -------------------------------------------------------------------------------------------

    def _provider_section(self, table: dict[str, Any], provider: str | None) -> dict[str, Any] | None:
        if not provider:
            return None
        name = provider.strip().lower()
        name = self.aliases.get(name, name)
        if name in table:
            return table[name]
        for known in sorted(table, key=len, reverse=True):   # "livekit.plugins.deepgram", "deepgramstt"
            if known in name:
                return table[known]
        return None

    @staticmethod
    def _model_entry(section: Mapping[str, Any], model: str | None, *, default: bool) -> Any:
        name = _normalize_model(model)
        if name:
            if name in section:
                return section[name]
            prefixes = [key for key in section if key != "default" and name.startswith(key)]
            if prefixes:
                return section[max(prefixes, key=len)]
        return section.get("default") if default else None

    def llm_cost(self, provider: str | None, model: str | None, input_tokens: int | None,
                 output_tokens: int | None, cached_tokens: int | None = None) -> float | None:
        if input_tokens is None and output_tokens is None:
            return None
        entry = None
        section = self._provider_section(self.llm, provider)
        if section is not None:
            entry = self._model_entry(section, model, default=True)
        if entry is None:   # unknown provider (a base-URL host, a proxy): the model name alone decides
            for candidate in self.llm.values():
                entry = self._model_entry(candidate, model, default=False)
                if entry is not None:
                    break
        if not isinstance(entry, Mapping):
            return None
        rate_in = _number(entry.get("input")) or 0.0
        rate_out = _number(entry.get("output")) or 0.0
        rate_cached = _number(entry.get("cached_input"))
        cached = min(max(cached_tokens or 0, 0), input_tokens or 0)
        uncached = (input_tokens or 0) - cached
        total = uncached * rate_in + cached * (rate_in if rate_cached is None else rate_cached) \
            + (output_tokens or 0) * rate_out
        return total / _PER_MILLION

    def _simple(self, table: dict[str, Any], provider: str | None, model: str | None) -> float | None:
        section = self._provider_section(table, provider)
        if section is None:
            return None
        if not isinstance(section, Mapping):
            return _number(section)
        return _number(self._model_entry(section, model, default=True))

    def stt_cost(self, provider: str | None, model: str | None, audio_seconds: float | None) -> float | None:
        rate = self._simple(self.stt, provider, model)
        if rate is None or audio_seconds is None or audio_seconds < 0:
            return None
        return audio_seconds / 60.0 * rate

    def tts_cost(self, provider: str | None, model: str | None, characters: int | None) -> float | None:
        rate = self._simple(self.tts, provider, model)
        if rate is None or characters is None or characters < 0:
            return None
        return characters * rate / _PER_MILLION

    def telephony_rows(self) -> list[tuple[str, float, str]]:
        """``(direction, per_minute, currency)`` rows for the ``telephony_rates`` table."""
        rows = []
        for direction, rate in sorted(self.telephony.items()):
            number = _number(rate)
            if number is not None:
                rows.append((direction, number, self.currency))
        return rows


def cost_facts(stage: str, provider: str | None, model: str | None, input_tokens: int | None,
               output_tokens: int | None, facts: Mapping[str, Any], prices: PriceTable) -> dict[str, Any]:
    """Computed ``cost_*`` facts of one span; a cost fact already present (producer-reported) is kept."""
    table = prices
    out: dict[str, Any] = {}
    if stage == "llm" and F.COST_LLM not in facts:
        cached = facts.get(F.LLM_CACHED_TOKENS)
        cost = table.llm_cost(provider or facts.get(F.LLM_PROVIDER), model or facts.get(F.LLM_MODEL),
                              input_tokens, output_tokens, cached if isinstance(cached, int) else None)
        if cost is not None:
            out[F.COST_LLM] = cost
    seconds = _number(facts.get(F.STT_AUDIO_SECONDS))
    if seconds is not None and F.COST_STT not in facts:
        cost = table.stt_cost(facts.get(F.STT_PROVIDER) or provider, model, seconds)
        if cost is not None:
            out[F.COST_STT] = cost
    characters = facts.get(F.TTS_CHARACTERS)
    if isinstance(characters, int) and F.COST_TTS not in facts:
        cost = table.tts_cost(facts.get(F.TTS_PROVIDER) or provider, model, characters)
        if cost is not None:
            out[F.COST_TTS] = cost
    if out and table.currency.upper() != "USD" and F.CURRENCY not in facts:
        out[F.CURRENCY] = table.currency
    return out
