from django.conf import settings
from django.db import models


class Order(models.Model):
    title = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=20, default="open")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    project_id = models.UUIDField(null=True, blank=True)


class Membership(models.Model):
    """Who may watch which project's channel (the test suite's authorization hook)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    project_id = models.UUIDField()


class Team(models.Model):
    """A tenant keyed by an integer, as Django's default primary key is."""

    name = models.CharField(max_length=100)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True)


class Effect(models.Model):
    """One database effect of a durable handler; counted by the tests, so no unique key:
    exactly once must come from eventbus's inbox, not from a constraint here."""

    event_id = models.UUIDField(db_index=True)
    handler = models.CharField(max_length=50)
    attempt = models.PositiveIntegerField()
    pid = models.PositiveIntegerField()
