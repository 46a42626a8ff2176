"""The chaos suite: real processes, a seeded nemesis, and a checker that counts.

``python -m tests.chaos`` (or ``bash scripts/chaos.sh``) runs it; ``tests/test_chaos.py``
runs its quick mode inside the test command. The parts, one module each:

- ``settings``: the Django settings of every process the suite starts;
- ``publisher``, ``subscribers``, ``relay_sink``: what those processes run;
- ``cluster``: starting, killing and restarting them;
- ``nemesis``: the seeded schedule of faults;
- ``check``: the counts, from the processes' records and the event log;
- ``run``: one seeded run, start to finish.
"""
