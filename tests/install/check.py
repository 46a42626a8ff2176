"""Install the built wheel as a user would and run a project that follows the README.

    python -m tests.install.check            (from the repository root; scripts/test.sh runs it)

Builds the wheel, installs ``<wheel>[redis]`` into a fresh virtualenv (not from
requirements.txt), copies the project next to this file out of the repository, and checks:
the wheel holds every file of the package; the README's Install blocks are the project's;
``manage.py check`` reports only ``eventbus.W003`` (no AUTHORIZE hook); and an event goes
publish → hand-off → Redis → ``eventbus_tail``, then, published while Redis is down,
publish → log → ``eventbus_relay`` → Redis → ``eventbus_tail``, against a private
redis-server. The last line says PASS or FAIL; the exit code is 0 only on PASS.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

from tests.services import REPO_ROOT, RedisServer, ServiceError

HERE = Path(__file__).resolve().parent
PROJECT_FILES = ["manage.py", "mysite", "shop"]
EXPECTED_CHECKS = ["eventbus.W003"]  # the README's smallest EVENTBUS has no AUTHORIZE hook
IDLE_SECONDS = 6.0  # longer than channels_redis's 5 s blocking read (eventbus/_redis.py)
STEP_TIMEOUT = 120.0


class InstallCheckFailed(Exception):
    pass


def run(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; return its stdout and stderr, or fail with both."""
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise InstallCheckFailed(f"{' '.join(map(str, args))} exited {done.returncode}:\n{output}")
    return output


def build_wheel(tmp: Path) -> Path:
    """Build from a copy: setuptools' build/ in the repository could hold stale files."""
    source, out = tmp / "source", tmp / "dist"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "eventbus", source / "eventbus", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)])
    (wheel,) = out.glob("django_eventbus-*.whl")
    return wheel


def check_wheel_contents(wheel: Path) -> None:
    """Every file of the package in the repository (code, migrations, static, py.typed),
    and the license."""
    package = REPO_ROOT / "eventbus"
    want = {
        str(path.relative_to(REPO_ROOT))
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    with zipfile.ZipFile(wheel) as archive:
        have = set(archive.namelist())
    if missing := sorted(want - have):
        raise InstallCheckFailed(f"the wheel lacks {', '.join(missing)}")
    if not any(name.endswith(".dist-info/licenses/LICENSE") for name in have):
        raise InstallCheckFailed("the wheel lacks the LICENSE file in its .dist-info/licenses")


def check_readme_blocks(project: Path) -> None:
    """Each ``# README: …`` block of the project is in a python block of README's Install."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = re.search(r"^## Install\n(.*?)^## ", readme, re.S | re.M)
    if section is None:
        raise InstallCheckFailed("README.md has no '## Install' section")
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
    marked = re.compile(r"^# README: (.+?)\n(.*?)^# README: end$", re.S | re.M)
    found = 0
    for path in sorted(project.rglob("*.py")):
        for name, text in marked.findall(path.read_text()):
            found += 1
            if not any(text.strip() in block for block in blocks):
                raise InstallCheckFailed(
                    f"README's Install section lacks the {name} block of {path.name}:\n{text}"
                )
    if found == 0:
        raise InstallCheckFailed("the project marks no README blocks")


def eventbus_ids(output: str) -> list[str]:
    return sorted(set(re.findall(r"\beventbus\.[EW]\d{3}\b", output)))


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float = 30.0) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            break
    raise InstallCheckFailed(f"eventbus_tail never said {text!r}")


def tail_one_event(
    manage: list[str],
    project: Path,
    env: dict[str, str],
    project_id: str,
    publish: Callable[[], object],
    idle: float = 0.0,
    redis_stays_up: bool = True,
) -> dict[str, object]:
    """Start eventbus_tail on the project's channel, wait ``idle`` s, ``publish()``, read one
    event. While Redis stays up, the tail must not lose the channel layer (redis-py 8)."""
    tail = subprocess.Popen(
        [*manage, "eventbus_tail", "--project", project_id, "--max-events", "1",
         "--max-seconds", "40"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_line(tail, "listening on")
        time.sleep(idle)
        publish()
        out, err = tail.communicate(timeout=30)
    finally:
        tail.kill()
        tail.wait()
    if (redis_stays_up and "lost the channel layer" in err) or tail.returncode != 0:
        raise InstallCheckFailed(f"eventbus_tail exited {tail.returncode}:\n{err}")
    lines = out.splitlines()
    if len(lines) != 1:
        raise InstallCheckFailed(f"eventbus_tail printed {len(lines)} events:\n{out}{err}")
    event: dict[str, object] = json.loads(lines[0])
    return event


def main() -> None:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="eventbus-install-"))
    redis = RedisServer()
    try:
        wheel = build_wheel(tmp)
        check_wheel_contents(wheel)
        venv = tmp / "venv"
        run([sys.executable, "-m", "venv", str(venv)])
        python = str(venv / "bin" / "python")
        run([python, "-m", "pip", "install", "-q", f"{wheel}[redis]"])
        project = tmp / "project"
        project.mkdir()
        for name in PROJECT_FILES:
            source = HERE / name
            if source.is_dir():
                shutil.copytree(source, project / name)
            else:
                shutil.copy(source, project / name)
        check_readme_blocks(project)

        redis.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTHON"))}
        env["REDIS_URL"] = redis.url
        manage = [python, "manage.py"]
        versions = run(
            [python, "-c", "import eventbus, redis, django; "
             "print(eventbus.__file__, redis.__version__, django.get_version())"],
            cwd=project, env=env,
        ).split()  # fmt: skip
        if not versions[0].startswith(str(venv)):
            raise InstallCheckFailed(f"eventbus was imported from {versions[0]}, not the wheel")

        run([*manage, "migrate", "--noinput", "-v", "0"], cwd=project, env=env)
        run([*manage, "makemigrations", "--check", "--dry-run"], cwd=project, env=env)
        for settings in ("mysite.settings", "mysite.settings_dev"):
            found = eventbus_ids(
                run([*manage, "check", "--settings", settings], cwd=project, env=env)
            )
            if found != EXPECTED_CHECKS:
                raise InstallCheckFailed(f"check with {settings}: {found}, not {EXPECTED_CHECKS}")
        run([python, "-c", "import mysite.asgi"], cwd=project, env=env)

        project_id = str(uuid.uuid4())
        payload = json.dumps({"order_id": str(uuid.uuid4()), "total_cents": 1200})
        emit = [*manage, "eventbus_emit", "order.placed", "--payload", payload,
                "--project", project_id]  # fmt: skip
        live = tail_one_event(
            manage, project, env, project_id, lambda: run(emit, cwd=project, env=env),
            idle=IDLE_SECONDS,
        )  # fmt: skip

        # Published while Redis is down: stored, handed off in vain, then relayed; the
        # tail, listening all along, gets it once Redis is back (from the log or the relay).
        def through_an_outage() -> None:
            redis.stop()
            said = run(emit, cwd=project, env=env)
            if "not delivered yet" not in said:
                raise InstallCheckFailed(f"eventbus_emit with Redis down said:\n{said}")
            redis.start()
            run([*manage, "eventbus_relay", "--max-seconds", "5"], cwd=project, env=env)

        relayed = tail_one_event(
            manage, project, env, project_id, through_an_outage, redis_stays_up=False
        )
        if live["id"] == relayed["id"] or {live["type"], relayed["type"]} != {"order.placed"}:
            raise InstallCheckFailed(f"unexpected events: {live} then {relayed}")
        pending = run(
            [*manage, "shell", "-c", "from eventbus.models import EventRecord; "
             "print(EventRecord.objects.exclude(status='delivered').count())"],
            cwd=project, env=env,
        )  # fmt: skip
        if pending.split()[-1:] != ["0"]:  # Django 6's shell says what it imported first
            raise InstallCheckFailed(f"rows not delivered: {pending}")
        print(
            f"install: PASS: installed {wheel.name}[redis] (redis-py {versions[1]}, Django "
            f"{versions[2]}): check, migrate, hand-off and relay over Redis "
            f"({time.monotonic() - started:.0f} s)"
        )
    except (InstallCheckFailed, ServiceError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"install: FAIL: {exc}")
        sys.exit(1)
    finally:
        redis.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
