"""The call-log event catalogue (design.md §5, seed 002): key → display name, category, default level.

Seeds the ``event_types`` table and gives every stored event its category and minimum level.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EventType", "CATALOGUE", "LEVELS", "level_rank", "lookup", "LIFECYCLE_STATUS"]

LEVELS = ("INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True)
class EventType:
    event: str
    display_name: str
    category: str
    default_level: str
    description: str


def _e(event: str, display: str, category: str, description: str, level: str = "INFO") -> EventType:
    return EventType(event, display, category, level, description)


CATALOGUE: tuple[EventType, ...] = (
    _e("call.queued", "Call Queued", "lifecycle", "The call is waiting for an available concurrency slot"),
    _e("call.ringing", "Call Ringing", "lifecycle", "Connection attempt in progress"),
    _e("call.answered", "Call Answered", "lifecycle", "The call was answered; the conversation is live"),
    _e("call.recording_started", "Recording Started", "lifecycle", "Call recording was initiated"),
    _e("call.completed", "Call Completed", "lifecycle", "The call ended successfully"),
    _e("call.failed", "Call Failed", "lifecycle", "The call failed due to an error", "CRITICAL"),
    _e("call.declined", "Call Declined", "lifecycle", "The user rejected the call"),
    _e("call.missed", "Call Missed", "lifecycle", "The user did not answer within the timeout"),
    _e("user.message_received", "User Message Received", "user",
       "A message from the contact was received (transcription completed)"),
    _e("user.started_speaking", "User Started Speaking", "user", "The contact started speaking"),
    _e("user.stopped_speaking", "User Stopped Speaking", "user", "The contact stopped speaking"),
    _e("agent.initialized", "Agent Initialized", "agent", "The agent was initialized for the call"),
    _e("agent.greeting_sent", "Greeting Sent", "agent", "The agent sent its welcome message"),
    _e("agent.message_sent", "Agent Message Sent", "agent", "The agent generated and sent a response"),
    _e("agent.started_speaking", "Agent Started Speaking", "agent", "The agent started speaking"),
    _e("agent.ended_speaking", "Agent Ended Speaking", "agent", "The agent finished speaking"),
    _e("agent.interrupted", "Agent Interrupted", "agent", "The contact interrupted the agent"),
    _e("agent.reminder_sent", "Reminder Message Sent", "agent", "The agent sent an inactivity reminder"),
    _e("tool.transfer.invoked", "Transfer Tool Invoked", "call_tool", "A call transfer was requested"),
    _e("tool.transfer.completed", "Transfer Tool Completed", "call_tool", "The transfer completed successfully"),
    _e("tool.transfer.failed", "Transfer Tool Failed", "call_tool", "The transfer failed", "ERROR"),
    _e("tool.hangup.invoked", "Hangup Tool Invoked", "call_tool", "A hangup was requested"),
    _e("tool.hangup.completed", "Hangup Tool Completed", "call_tool", "The call was hung up successfully"),
    _e("integration.invoked", "Integration Tool Invoked", "integration", "The agent executed an integration tool"),
    _e("integration.approval_requested", "Approval Requested", "integration",
       "The tool requires confirmation from the contact"),
    _e("integration.approval_granted", "Approval Granted", "integration", "The contact confirmed the execution"),
    _e("integration.approval_denied", "Approval Denied", "integration", "The contact denied the execution"),
    _e("integration.completed", "Integration Tool Completed", "integration", "The integration executed successfully"),
    _e("integration.failed", "Integration Tool Failed", "integration", "The integration failed", "ERROR"),
    _e("path.transition", "Path Transition", "path", "The agent moved from one node to another"),
    _e("path.node_generation_started", "Node Generation Started", "path",
       "The agent started generating a response at a node"),
    _e("path.error", "Path Error", "path", "An error occurred during path execution", "ERROR"),
    _e("transfer.human_dialing", "Human Participant Dialing", "transfer", "The human agent is being called"),
    _e("transfer.human_answered", "Human Participant Answered", "transfer", "The human agent answered"),
    _e("transfer.human_disconnected", "Human Participant Disconnected", "transfer",
       "The human agent disconnected"),
    _e("transfer.completed", "Transfer Completed", "transfer", "The transfer was completed"),
    _e("webhook.queued", "Webhook Queued", "webhook", "The webhook was queued for delivery"),
    _e("webhook.sent", "Webhook Sent", "webhook", "The webhook HTTP request was sent"),
    _e("webhook.response_success", "Webhook Response Success", "webhook",
       "The webhook received a successful response"),
    _e("webhook.response_failed", "Webhook Response Failed", "webhook",
       "The webhook received an error response", "WARNING"),
    _e("webhook.retry_exhausted", "Webhook Retry Exhausted", "webhook", "All webhook retries were exhausted",
       "ERROR"),
)

_BY_KEY = {event_type.event: event_type for event_type in CATALOGUE}
_RANK = {level: rank for rank, level in enumerate(LEVELS)}

# Lifecycle events that state the call's status (design §4: they win over derived statuses).
LIFECYCLE_STATUS = {
    "call.queued": "queued",
    "call.ringing": "ringing",
    "call.answered": "active",
    "call.completed": "completed",
    "call.failed": "failed",
    "call.declined": "declined",
    "call.missed": "missed",
}


def lookup(event: str) -> EventType | None:
    return _BY_KEY.get(event)


def level_rank(level: str) -> int:
    return _RANK.get(level, 0)
