"""The facts contract: every fact a span may contribute to its call and its turn (``spans.facts``, jsonb).

A mapper (collector/mappers/) turns one span into a few facts — "the user stopped speaking at t", "this call is
outbound" — and the derivation (storage/derive/*.sql) combines the facts of all of a call's spans into its
``turns`` and ``calls`` rows. This module is the one list of them both sides use: mappers write facts with
the constants below (``facts[F.USER_TEXT] = …``), the derivation reads the same keys, and
tests/test_facts.py checks that every key the SQL reads is declared here and written by a mapper, that every
declared fact is read, and that mappers emit only declared facts of the declared type.

Times are epoch microseconds (keys ending in ``_us``); durations are float milliseconds (``_ms``). A fact
the column cannot hold is left out by the pipeline (collector/pipeline.py); the raw attribute stays on the
span.

Each fact says who emits it (``emitted_by``: a mapper's ``name``, or one of the other writers in
``EMITTERS``) and which statements of the derivation read it (``read_by``: the ``-- name:`` of a statement in
storage/derive/, or ``cost`` for collector/cost.py, which turns usage facts into cost facts).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Fact", "FACTS", "EMITTERS", "MAPPERS"]

MAPPERS = ("pipecat", "livekit", "openinference", "openllmetry", "native", "genai")
# Writers of facts besides the mappers' own mapping of a span.
EMITTERS = {
    **{name: f"collector/mappers/{name}.py" for name in MAPPERS},
    "call_attributes": "collector/mappers/native.py call_facts: the native call.* attributes, read on any span",
    "cost": "collector/cost.py: cost of a span's usage from the price table",
    "pipeline": "collector/pipeline.py: how the span's turn is numbered",
}
_ALL_CHAT = ("genai", "livekit", "native", "openinference", "openllmetry", "pipecat")   # llm_mapping
_SESSION = ("genai", "livekit", "native", "openllmetry", "pipecat")                    # session_mapping
_STANDALONE = ("genai", "openinference", "openllmetry")                                # standalone_turn


@dataclass(frozen=True, slots=True)
class Fact:
    key: str
    type: type               # of the JSON value: int (also every *_us time), float, str, bool, list, dict
    meaning: str
    emitted_by: tuple[str, ...]
    read_by: tuple[str, ...]


FACTS: dict[str, Fact] = {}


def _fact(key: str, kind: type, meaning: str, *, by: tuple[str, ...], read: tuple[str, ...]) -> str:
    FACTS[key] = Fact(key, kind, meaning, tuple(sorted(set(by))), read)
    return key


_CALL = ("upsert_calls",)
_PRICE = ("price_calls",)   # storage/derive/cost.sql
_REPORTED = (*_PRICE, "cost")   # collector/cost.py keeps a cost (or currency) the producer reported
_TURN = ("upsert_turns",)

# --- the call: one value per call, the latest span's wins ------------------------------------------------------
DIRECTION = _fact("direction", str, "inbound | outbound | web", by=("call_attributes", "livekit"), read=_CALL)
CAMPAIGN = _fact("campaign", str, "the campaign the call belongs to (call.campaign)", by=("call_attributes",),
                 read=_CALL)
AGENT = _fact("agent", str, "the agent that served the call (call.agent, gen_ai.agent.name)",
              by=("call_attributes", "livekit"), read=_CALL)
STATUS = _fact("status", str, "a status the producer stated (call.status); it wins over inferred ones",
               by=("call_attributes",), read=_CALL)
STATUS_REASON = _fact("status_reason", str, "why the call failed, was declined or missed", by=("call_attributes",),
                      read=_CALL)
FROM_NUMBER = _fact("from_number", str, "caller number (call.from, LiveKit SIP attributes)",
                    by=("call_attributes", "livekit"), read=_CALL)
TO_NUMBER = _fact("to_number", str, "called number (call.to, LiveKit SIP attributes)",
                  by=("call_attributes", "livekit"), read=_CALL)
SUMMARY = _fact("summary", str, "post-call summary", by=("call_attributes",), read=_CALL)
RECORDING_URL = _fact("recording_url", str, "where the call's recording is", by=("call_attributes",), read=_CALL)
TAGS = _fact("tags", list, "tags of the call (strings)", by=("call_attributes",), read=_CALL)
EXTRACTED = _fact("extracted", dict, "data extracted from the conversation", by=("call_attributes",), read=_CALL)
SIP_CODE = _fact("sip_code", int, "final SIP response code: 486/600/603 declined, 408/480/487 missed, ≥ 400 failed",
                 by=("call_attributes",), read=_CALL)
SESSION_END_US = _fact("session_end_us", int, "the end of the span that bounds the whole call: the call ended",
                       by=_SESSION, read=_CALL)
SESSION_ERROR = _fact("session_error", str, "that span ended with an error: the call failed, this is why",
                      by=_SESSION, read=_CALL)
COST_TOTAL = _fact("cost_total", float, "the call's total cost as the producer reports it (call.cost); wins",
                   by=("call_attributes",), read=_PRICE)
CURRENCY = _fact("currency", str, "currency of the costs (call.cost.currency, else the price table's)",
                 by=("call_attributes", "cost"), read=_REPORTED)
COST_STT = _fact("cost_stt", float, "this span's speech-to-text cost; summed per call", by=("cost",), read=_REPORTED)
COST_LLM = _fact("cost_llm", float, "this span's LLM cost (reported, e.g. OpenInference llm.cost.*, else priced)",
                 by=("cost", "openinference"), read=_REPORTED)
COST_TTS = _fact("cost_tts", float, "this span's text-to-speech cost; summed per call", by=("cost",), read=_REPORTED)

# --- the turn: combined over the spans of one turn number --------------------------------------------------------
TURN_START_US = _fact("turn_start_us", int, "start of the turn span", by=(*_STANDALONE, "livekit", "native",
                                                                         "pipecat"), read=_TURN)
TURN_END_US = _fact("turn_end_us", int, "end of the turn span", by=(*_STANDALONE, "livekit", "native", "pipecat"),
                    read=_TURN)
USER_STOPPED_US = _fact("user_stopped_us", int, "the user stopped speaking", by=("livekit", "native", "pipecat"),
                        read=_TURN)
EOU_US = _fact("eou_us", int, "end of utterance was detected (native stt.eou_ms after the STT span's start)",
               by=("native",), read=_TURN)
EOU_MS = _fact("eou_ms", float, "end-of-utterance delay the producer reports", by=("livekit", "native"), read=_TURN)
STT_FINAL_US = _fact("stt_final_us", int, "the final transcript arrived",
                     by=("genai", "livekit", "native", "openinference", "pipecat"), read=_TURN)
LLM_REQUEST_US = _fact("llm_request_us", int, "the LLM request was sent", by=_ALL_CHAT, read=_TURN)
LLM_FIRST_TOKEN_US = _fact("llm_first_token_us", int, "the LLM's first token arrived", by=_ALL_CHAT, read=_TURN)
TTS_REQUEST_US = _fact("tts_request_us", int, "the TTS request was sent",
                       by=("genai", "livekit", "native", "openinference", "pipecat"), read=_TURN)
TTS_FIRST_AUDIO_US = _fact("tts_first_audio_us", int, "the first audio byte came back",
                           by=("livekit", "native", "pipecat"), read=(*_TURN, "collect_speech"))
AGENT_STARTED_US = _fact("agent_started_us", int, "the agent's audio started playing (else first TTS audio)",
                         by=("livekit",), read=(*_TURN, "collect_speech"))
USER_TEXT = _fact("user_text", str, "what the user said: the turn span's, else the stage spans' joined",
                  by=("genai", "livekit", "native", "openinference", "pipecat"), read=_TURN)
PROMPT_TEXT = _fact("prompt_text", str, "the user message an LLM request answered (lowest-priority user text)",
                    by=(*_STANDALONE, "livekit", "pipecat"), read=_TURN)
AGENT_TEXT = _fact("agent_text", str, "what the agent said: the turn span's, else the spoken (TTS) text",
                   by=("genai", "livekit", "native", "openinference", "pipecat"), read=_TURN)
LLM_TEXT = _fact("llm_text", str, "what the LLM answered (agent text when nothing was spoken)", by=_ALL_CHAT,
                 read=_TURN)
INTERRUPTED = _fact("interrupted", bool, "the contact interrupted the agent in this turn", by=_ALL_CHAT,
                    read=_TURN)
REPORTED_V2V_MS = _fact("reported_v2v_ms", float, "voice-to-voice latency as the framework measured it",
                        by=("livekit", "native", "openinference", "pipecat"), read=_TURN)
STT_PROVIDER = _fact("stt_provider", str, "speech-to-text provider (the first in the turn)",
                     by=("genai", "livekit", "native", "openinference", "pipecat"), read=(*_TURN, "cost"))
LLM_PROVIDER = _fact("llm_provider", str, "LLM provider (the first in the turn)", by=_ALL_CHAT,
                     read=(*_TURN, "cost"))
LLM_MODEL = _fact("llm_model", str, "LLM model (the first in the turn)", by=_ALL_CHAT, read=(*_TURN, "cost"))
TTS_PROVIDER = _fact("tts_provider", str, "text-to-speech provider (the first in the turn)",
                     by=("genai", "livekit", "native", "openinference", "pipecat"), read=(*_TURN, "cost"))

# --- who spoke when: speech intervals, for dead air and barge-in (design §10) -----------------------------------
_SPEECH = ("collect_speech",)
SPEECH_SIDE = _fact("speech_side", str, "user | agent: this span is one side speaking, from speech_start_us to "
                    "speech_end_us", by=("livekit", "pipecat"), read=_SPEECH)
SPEECH_START_US = _fact("speech_start_us", int, "that side started speaking", by=("livekit", "pipecat"),
                        read=_SPEECH)
SPEECH_END_US = _fact("speech_end_us", int, "that side stopped speaking", by=("livekit", "pipecat"), read=_SPEECH)
AGENT_SPEECH_END_US = _fact("agent_speech_end_us", int, "the agent's audio of the turn stopped (frameworks with no "
                            "agent speaking span: Pipecat); it started at agent_started_us or tts_first_audio_us",
                            by=("pipecat",), read=_SPEECH)

# --- which turn a span belongs to ----------------------------------------------------------------------------
TURN_EXPLICIT = _fact("turn_explicit", bool, "the span carries its own turn number: it anchors its children",
                      by=("pipeline",), read=("inherit_turn_numbers",))
TURN_SEQ = _fact("turn_seq", bool, "a turn without a number of its own: numbered by start time within the call",
                 by=(*_STANDALONE, "pipeline"), read=("number_implicit_turns", "inherit_turn_numbers"))
TURN_ROLE = _fact("turn_role", str, "user | agent: sibling turn spans (LiveKit user_turn / agent_turn) are paired",
                  by=("livekit",), read=("number_implicit_turns",))
TURN_PAIR_KEY = _fact("turn_pair_key", str, "what pairs an agent turn with its user turn (the user's transcript)",
                      by=("livekit",), read=("number_implicit_turns",))

# --- inputs of the span's cost (collector/cost.py) -------------------------------------------------------------
LLM_CACHED_TOKENS = _fact("llm_cached_tokens", int, "input tokens served from the provider's cache",
                          by=("livekit", "openinference", "openllmetry", "pipecat"), read=("cost",))
STT_AUDIO_SECONDS = _fact("stt_audio_seconds", float, "seconds of audio transcribed",
                          by=("livekit", "native", "openinference", "pipecat"), read=("cost",))
TTS_CHARACTERS = _fact("tts_characters", int, "characters synthesized",
                       by=("livekit", "native", "openinference", "pipecat"), read=("cost",))
