"""The security suite: hostile clients against real uvicorn and daphne processes.

The quick version runs with the test suite; ``bash scripts/security.sh`` runs the full
one (``EVENTBUS_SECURITY_FULL=1``) and prints a table per server.
"""
