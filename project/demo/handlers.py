"""How the demo's domains react to each other, through events only.

Discovered at start-up (EVENTBUS['HANDLER_MODULES'] defaults to 'handlers').
The flow: triage.finished -> ticket.created -> ticket.assignee_updated +
agent.status_changed + agent.message (+ ticket.escalated when urgent). The first step
is durable: it runs in ``manage.py db_worker``, the rest in-process after it.
"""

import uuid

from eventbus import Event, ModelEvents, OnChange, OnCreate, event_handler, publish
from project.events import (
    AgentStatus,
    AppEvent,
    EventType,
    MessageRole,
    Priority,
    TicketCreated,
    TicketStatus,
    TriageFinished,
)

from .models import Agent, Ticket


class TicketEvents(ModelEvents):
    model = Ticket
    project = "project_id"
    created = OnCreate(AppEvent.TICKET_CREATED)
    status = OnChange("status", AppEvent.TICKET_STATUS_UPDATED)
    assignee = OnChange("assignee", AppEvent.TICKET_ASSIGNEE_UPDATED)
    closed = OnChange(
        "status", AppEvent.TICKET_CLOSED, when=lambda old, new: new == TicketStatus.CLOSED
    )


class AgentEvents(ModelEvents):
    model = Agent
    project = "project_id"
    actor_type = "agent"
    spawned = OnCreate(EventType.AGENT_SPAWNED)
    status = OnChange("status", EventType.AGENT_STATUS_CHANGED)


# Durable: a task worker runs it after the commit, and retries it if it fails or the
# worker dies; the ticket and the run's done mark commit together, so a triage opens
# exactly one ticket however often the run repeats.
@event_handler(AppEvent.TRIAGE_FINISHED, durable=True)
def open_ticket(event: Event[TriageFinished]) -> None:
    Ticket.objects.create(
        project_id=event.project_id,
        title=event.payload.title,
        priority=event.payload.priority,
    )


@event_handler(AppEvent.TICKET_CREATED)
def assign_ticket(event: Event[TicketCreated]) -> None:
    agent = Agent.objects.filter(project_id=event.project_id, status=AgentStatus.IDLE).first()
    ticket = Ticket.objects.get(pk=event.payload.ticket_id)
    if event.payload.priority == Priority.URGENT:
        publish(
            AppEvent.TICKET_ESCALATED,
            {"ticket_id": ticket.pk, "reason": "urgent priority", "level": 2},
            project_id=event.project_id,
        )
    if agent is None:
        return
    ticket.assignee = agent
    ticket.status = TicketStatus.IN_PROGRESS
    ticket.save()
    agent.status = AgentStatus.WORKING
    agent.save()
    publish(
        EventType.AGENT_MESSAGE,
        {
            "agent_id": agent.pk,
            "message_id": uuid.uuid4(),
            "role": MessageRole.ASSISTANT,
            "content": f"Picked up “{ticket.title}”.",
        },
        project_id=event.project_id,
        actor_id=agent.pk,
        actor_type="agent",
    )
