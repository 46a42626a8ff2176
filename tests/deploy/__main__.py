"""``python -m tests.deploy [options]``: the deployment run at any size, on its own services.

It starts a redis-server of its own and creates a database of its own (PostgreSQL at
127.0.0.1:5432 as in tests/settings.py, dropped at the end; or a SQLite file with
``--db sqlite``), then runs ``tests/deploy/run.py`` and prints the figures. The
defaults are the test's size (tests/test_deployment.py); for example::

    python -m tests.deploy --sockets 5000 --events 1000 --publish-seconds 30
    python -m tests.deploy --layer pubsub --db sqlite

Logs and report.json go to test-results/deploy-<layer>-<db>/. Exit status 1 when a count
that should be zero is not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tests.services import REPO_ROOT, RedisServer

LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.deploy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workers", type=int, default=4, help="uvicorn --workers (4)")
    parser.add_argument("--relays", type=int, default=2, help="eventbus_relay workers (2)")
    parser.add_argument("--sockets", type=int, default=2000, help="WebSockets (2000)")
    parser.add_argument(
        "--client-processes", type=int, default=2, help="processes holding them (2)"
    )
    parser.add_argument("--projects", type=int, default=50, help="project channels (50)")
    parser.add_argument("--users", type=int, default=200, help="signed-in users (200)")
    parser.add_argument("--publishers", type=int, default=3, help="publisher processes (3)")
    parser.add_argument("--events", type=int, default=200, help="events per publisher (200)")
    parser.add_argument("--publish-seconds", type=float, default=6.0, help="pace (6)")
    parser.add_argument("--layer", choices=sorted(LAYERS), default="core")
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--no-kill-relay", action="store_true", help="keep every relay up")
    parser.add_argument(
        "--pool", action="store_true", help="PostgreSQL through psycopg's pool, in every process"
    )
    args = parser.parse_args()
    for name in ("workers", "sockets", "client_processes", "projects", "users", "publishers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more")

    run_dir = REPO_ROOT / "test-results" / f"deploy-{args.layer}-{args.db}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with RedisServer() as redis, database(args.db, run_dir) as name:
        os.environ.update(DJANGO_SETTINGS_MODULE="tests.settings", EVENTBUS_TEST_DB_NAME=name)
        if args.db == "postgres":
            os.environ["EVENTBUS_TEST_DB"] = "postgres"
        import django
        from django.core.management import call_command

        django.setup()
        if args.db == "sqlite":
            call_command("migrate", verbosity=0, interactive=False)

        from .run import Size, run, summary

        size = Size(
            run_dir=run_dir,
            redis_url=redis.url,
            layer=LAYERS[args.layer],
            workers=args.workers,
            relays=args.relays,
            sockets=args.sockets,
            client_processes=args.client_processes,
            projects=args.projects,
            users=args.users,
            publishers=args.publishers,
            events_per_publisher=args.events,
            publish_seconds=args.publish_seconds,
            kill_relay=not args.no_kill_relay,
            db_pool=args.pool,
        )
        report = run(size)
        from django.db import connection

        connection.close()
    print(summary(report), flush=True)
    return 0 if report["ok"] else 1


class database:
    """A database of the run's own: PostgreSQL (created, migrated, dropped) or a SQLite file."""

    def __init__(self, kind: str, run_dir: Path) -> None:
        self.kind = kind
        self.name = f"eventbus_deploy_{os.getpid()}"
        self.file = Path(tempfile.gettempdir()) / f"{self.name}.sqlite3"

    def __enter__(self) -> str:
        if self.kind == "sqlite":
            return str(self.file)
        from tests.chaos.run import database as postgres_database

        self._postgres = postgres_database(self.name)
        return self._postgres.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.kind == "sqlite":
            self.file.unlink(missing_ok=True)
        else:
            self._postgres.__exit__(*exc)


if __name__ == "__main__":
    sys.exit(main())
