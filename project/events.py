"""The demo's event catalog: ticket triage, agents, issues, sprints and approvals.

Named in settings as ``EVENTBUS['CATALOGS'] = ['project.events.EVENT_PAYLOAD_MAP']``.
"""

from __future__ import annotations

import enum
from datetime import date
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from eventbus import EventSpec


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AppEvent(enum.StrEnum):
    TRIAGE_FINISHED = "triage.finished"
    TICKET_CREATED = "ticket.created"
    TICKET_ASSIGNEE_UPDATED = "ticket.assignee_updated"
    TICKET_STATUS_UPDATED = "ticket.status_updated"
    TICKET_ESCALATED = "ticket.escalated"
    TICKET_CLOSED = "ticket.closed"


class EventType(enum.StrEnum):
    AGENT_SPAWNED = "agent.spawned"
    AGENT_STATUS_CHANGED = "agent.status_changed"
    AGENT_MESSAGE = "agent.message"
    AGENT_TERMINATED = "agent.terminated"
    ISSUE_CREATED = "issue.created"
    ISSUE_UPDATED = "issue.updated"
    ISSUE_ASSIGNED = "issue.assigned"
    ISSUE_CLOSED = "issue.closed"
    SPRINT_STARTED = "sprint.started"
    SPRINT_COMPLETED = "sprint.completed"
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_GRANTED = "approval.granted"
    APPROVAL_DENIED = "approval.denied"


class Priority(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class TicketStatus(enum.StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    WAITING = "waiting"
    CLOSED = "closed"


class AgentStatus(enum.StrEnum):
    IDLE = "idle"
    WORKING = "working"
    BLOCKED = "blocked"
    TERMINATED = "terminated"


class AgentRole(enum.StrEnum):
    TRIAGE = "triage"
    SUPPORT = "support"
    ENGINEER = "engineer"


class MessageRole(enum.StrEnum):
    ASSISTANT = "assistant"
    TOOL = "tool"
    SYSTEM = "system"


class IssueResolution(enum.StrEnum):
    FIXED = "fixed"
    WONT_FIX = "wont_fix"
    DUPLICATE = "duplicate"


# -- tickets -------------------------------------------------------------------


class TriageFinished(Payload):
    conversation_id: UUID
    title: str = Field(min_length=1, max_length=200)
    priority: Priority
    summary: str = ""


class TicketCreated(Payload):
    ticket_id: UUID
    title: str
    status: TicketStatus
    priority: Priority


class TicketAssigneeUpdated(Payload):
    ticket_id: UUID
    old_assignee_id: UUID | None
    new_assignee_id: UUID | None


class TicketStatusUpdated(Payload):
    ticket_id: UUID
    old_status: TicketStatus
    new_status: TicketStatus


class TicketEscalated(Payload):
    ticket_id: UUID
    reason: str
    level: int = Field(ge=1, le=3)


class TicketClosed(Payload):
    ticket_id: UUID
    title: str


# -- agents --------------------------------------------------------------------


class AgentSpawned(Payload):
    agent_id: UUID
    name: str
    role: AgentRole


class AgentStatusChanged(Payload):
    agent_id: UUID
    old_status: AgentStatus
    new_status: AgentStatus


class AgentMessage(Payload):
    agent_id: UUID
    message_id: UUID
    role: MessageRole
    content: str = Field(max_length=10_000)


class AgentTerminated(Payload):
    agent_id: UUID
    reason: str


# -- issues and sprints --------------------------------------------------------


class IssueCreated(Payload):
    issue_id: UUID
    title: str
    priority: Priority


class IssueUpdated(Payload):
    issue_id: UUID
    changed_fields: tuple[str, ...] = Field(min_length=1)


class IssueAssigned(Payload):
    issue_id: UUID
    assignee_id: UUID


class IssueClosed(Payload):
    issue_id: UUID
    resolution: IssueResolution


class SprintStarted(Payload):
    sprint_id: UUID
    name: str
    starts_on: date
    ends_on: date
    issue_ids: tuple[UUID, ...] = ()


class SprintCompleted(Payload):
    sprint_id: UUID
    completed_issue_ids: tuple[UUID, ...] = ()
    carried_over_issue_ids: tuple[UUID, ...] = ()


# -- approvals -----------------------------------------------------------------


class ApprovalRequested(Payload):
    approval_id: UUID
    requested_by: UUID
    action: str
    reason: str = ""


class ApprovalGranted(Payload):
    approval_id: UUID
    approver_id: UUID


class ApprovalDenied(Payload):
    approval_id: UUID
    approver_id: UUID
    reason: str


EVENT_PAYLOAD_MAP: dict[enum.StrEnum, type[Payload] | EventSpec] = {
    AppEvent.TRIAGE_FINISHED: TriageFinished,
    AppEvent.TICKET_CREATED: TicketCreated,
    AppEvent.TICKET_ASSIGNEE_UPDATED: TicketAssigneeUpdated,
    AppEvent.TICKET_STATUS_UPDATED: TicketStatusUpdated,
    AppEvent.TICKET_ESCALATED: TicketEscalated,
    AppEvent.TICKET_CLOSED: TicketClosed,
    EventType.AGENT_SPAWNED: AgentSpawned,
    EventType.AGENT_STATUS_CHANGED: AgentStatusChanged,
    EventType.AGENT_MESSAGE: AgentMessage,
    EventType.AGENT_TERMINATED: AgentTerminated,
    EventType.ISSUE_CREATED: IssueCreated,
    EventType.ISSUE_UPDATED: IssueUpdated,
    EventType.ISSUE_ASSIGNED: IssueAssigned,
    EventType.ISSUE_CLOSED: IssueClosed,
    EventType.SPRINT_STARTED: SprintStarted,
    EventType.SPRINT_COMPLETED: SprintCompleted,
    EventType.APPROVAL_REQUESTED: ApprovalRequested,
    EventType.APPROVAL_GRANTED: ApprovalGranted,
    EventType.APPROVAL_DENIED: ApprovalDenied,
}
