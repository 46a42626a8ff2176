"""The same project in development: no Redis, the in-memory channel layer."""

from .settings import *  # noqa: F403

DEBUG = True

# README: CHANNEL_LAYERS (development)
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# README: end
