"""The multi-process deployment, run for real: README's *Deployment*, as a test and a command.

One uvicorn with ``--workers N`` on one port, M ``eventbus_relay`` workers, publisher
processes, and thousands of WebSocket clients subscribed to project channels, on one
Redis and one database. ``tests/test_deployment.py`` runs a quick size;
``python -m tests.deploy`` runs any size (see ``tests/deploy/__main__.py``).
"""
