from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from project.demo.models import Agent, Project
from project.events import AgentRole

DEMO_USERS = {
    # username: (password, is_superuser, projects)
    "admin": ("admin", True, ["Apollo", "Borealis"]),
    "alice": ("alice", False, ["Apollo"]),
    "bob": ("bob", False, ["Borealis"]),
}
AGENTS = [
    ("Triage bot", AgentRole.TRIAGE),
    ("Ada", AgentRole.SUPPORT),
    ("Linus", AgentRole.ENGINEER),
]


class Command(BaseCommand):
    help = "Create the demo's projects, agents and users (idempotent) and print the logins."

    @transaction.atomic
    def handle(self, *args: object, **options: object) -> None:
        projects = {}
        for name in ("Apollo", "Borealis"):
            projects[name], created = Project.objects.get_or_create(name=name)
            if created:
                for agent_name, role in AGENTS:
                    Agent.objects.create(project=projects[name], name=agent_name, role=role)
        User = get_user_model()
        for username, (password, superuser, member_of) in DEMO_USERS.items():
            user, created = User.objects.get_or_create(
                username=username, defaults={"is_staff": superuser, "is_superuser": superuser}
            )
            if created:
                user.set_password(password)
                user.save()
            user.projects.add(*(projects[name] for name in member_of))
        self.stdout.write("Demo logins (username / password):")
        for username, (password, superuser, member_of) in DEMO_USERS.items():
            role = (
                "superuser, admin at /admin/" if superuser else "member of " + ", ".join(member_of)
            )
            self.stdout.write(f"  {username} / {password}   ({role})")
