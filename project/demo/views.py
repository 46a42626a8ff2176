import random
import uuid

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from eventbus import publish
from eventbus.bus import EventBus
from eventbus.streams import heads
from project.events import AppEvent, Priority

from .models import Agent, Project

RECENT_EVENTS = 50
"""How many of a project's events /live/ shows again after a reload."""

TITLES = [
    "Customer cannot reset password",
    "Invoice PDF shows wrong VAT",
    "Checkout times out on mobile",
    "Export to CSV drops accents",
]


@login_required
def index(request: HttpRequest) -> HttpResponse:
    projects = request.user.projects.prefetch_related("tickets__assignee", "agents")  # type: ignore[union-attr]
    return render(request, "demo/index.html", {"projects": projects})


@login_required
@require_POST
def run_flow(request: HttpRequest, project_id: uuid.UUID) -> HttpResponse:
    """Start the demo flow: a triage that finished, as a chat bot would report it."""
    project = get_object_or_404(Project, pk=project_id, members=request.user)
    priority = (
        Priority.URGENT
        if request.POST.get("urgent")
        else random.choice([Priority.LOW, Priority.NORMAL, Priority.HIGH])
    )
    event = publish(
        AppEvent.TRIAGE_FINISHED,
        {"conversation_id": uuid.uuid4(), "title": random.choice(TITLES), "priority": priority},
        project_id=project.pk,
        actor_id=None,
        actor_type="user",
    )
    # The live page posts with fetch() and asks for JSON; the index page's form wants HTML.
    if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
        return JsonResponse({"id": str(event.id), "type": event.type.value})
    return redirect(request.POST.get("next") or "demo:index")


def resume_point(project_id: uuid.UUID) -> dict[str, int | str]:
    """Where the live page starts a project's stream: ``{position, epoch}`` on its channel.

    RECENT_EVENTS positions back from the channel's head, so the server replays the
    project's newest RECENT_EVENTS events (all of them, the first included, when it has
    fewer), then goes on live. A channel with no event yet starts at 0 with no epoch:
    whatever comes before the page subscribes is replayed too.
    """
    channel = EventBus.get_project_channel(project_id)
    head = heads([channel])[channel]
    return {"position": max(0, head.position - RECENT_EVENTS), "epoch": head.epoch}


@login_required
def live(request: HttpRequest) -> HttpResponse:
    """A project's events as they happen, streamed by static/eventbus/eventbus.js.

    The page resumes each of the member's projects from ``resume_point()``, so a reload
    shows the recent events again, through the same replay by position a reconnect uses.
    """
    projects = [
        {
            "id": str(project.pk),
            "name": project.name,
            "channel": EventBus.get_project_channel(project.pk),
            "flow_url": reverse("demo:run-flow", args=[project.pk]),
            "resume": resume_point(project.pk),
        }
        for project in request.user.projects.order_by("name")  # type: ignore[union-attr]
    ]
    try:
        selected = str(uuid.UUID(request.GET.get("project", "")))
    except ValueError:
        selected = ""
    # Any project may be named in the URL: the authorization hook, not this view, keeps
    # a project's events to its members (a non-member sees "forbidden").
    if selected and selected not in {project["id"] for project in projects}:
        projects.append(
            {
                "id": selected,
                "name": f"Project {selected[:8]} (not a member)",
                "channel": EventBus.get_project_channel(selected),
                "flow_url": "",
                "resume": None,  # a non-member learns nothing of the project's log
            }
        )
    agents = Agent.objects.filter(project__members=request.user)
    return render(
        request,
        "demo/live.html",
        {
            "projects": projects,
            "selected": selected,
            "agent_names": {str(agent.pk): agent.name for agent in agents},
        },
    )
