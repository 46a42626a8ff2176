import uuid

from django.conf import settings
from django.db import models

from project.events import AgentRole, AgentStatus, Priority, TicketStatus


class Project(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="projects", blank=True)

    def __str__(self) -> str:
        return self.name


class Agent(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=20, choices=[(r.value, r.name.title()) for r in AgentRole])
    status = models.CharField(
        max_length=20,
        choices=[(s.value, s.name.title()) for s in AgentStatus],
        default=AgentStatus.IDLE,
    )

    def __str__(self) -> str:
        return self.name


class Ticket(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tickets")
    title = models.CharField(max_length=200)
    status = models.CharField(
        max_length=20,
        choices=[(s.value, s.name.replace("_", " ").title()) for s in TicketStatus],
        default=TicketStatus.OPEN,
    )
    priority = models.CharField(
        max_length=20,
        choices=[(p.value, p.name.title()) for p in Priority],
        default=Priority.NORMAL,
    )
    assignee = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="tickets"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return self.title
