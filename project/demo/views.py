import random
import uuid

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from eventbus import publish
from project.events import AppEvent, Priority

from .models import Project

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
    publish(
        AppEvent.TRIAGE_FINISHED,
        {"conversation_id": uuid.uuid4(), "title": random.choice(TITLES), "priority": priority},
        project_id=project.pk,
        actor_id=None,
        actor_type="user",
    )
    return redirect(request.POST.get("next") or "demo:index")
