"""Channel-name validation: the examples that broke it, then a seeded fuzz against a plain oracle."""

import random
import string
from types import SimpleNamespace

import pytest
from pydantic import BaseModel, ConfigDict

from eventbus.channel_names import default_channels, validate_channel
from eventbus.envelope import ActorType
from eventbus.exceptions import InvalidChannelError

ALLOWED = set(string.ascii_letters + string.digits + "._-")
# Characters a hostile client would try: line ends, whitespace, separators, look-alikes.
HOSTILE = "\n\r\t \x00\x0b\x0c/\\:*?[]{}$^\u00e9\u0130\u212a\u00a0\u2028\u0660\uff10"


def oracle(name: str) -> bool:
    """What the protocol says, written without a regular expression."""
    return 1 <= len(name) <= 90 and all(char in ALLOWED for char in name)


@pytest.mark.parametrize(
    "name",
    [
        "eventbus.project.abc\n",  # `$` with re.match let this one through
        "\neventbus.project.abc",
        "eventbus.project.abc\r\n",
        "eventbus.project abc",
        "",
        "x" * 91,
        "eventbus.project.\u0660",  # a non-ASCII digit
        "K\u212a",  # KELVIN SIGN, which some case folding maps to k
    ],
)
def test_hostile_names_are_refused(name):
    with pytest.raises(InvalidChannelError):
        validate_channel(name)


@pytest.mark.parametrize("value", [None, 42, b"eventbus.project.abc", ["a"], {"a": 1}])
def test_non_strings_are_refused(value):
    with pytest.raises(InvalidChannelError):
        validate_channel(value)


def test_seeded_fuzz_agrees_with_the_oracle():
    rng = random.Random(12)
    alphabet = "".join(sorted(ALLOWED)) + HOSTILE
    checked = accepted = 0
    for _ in range(20_000):
        length = rng.choice([0, 1, 2, 5, 40, 89, 90, 91, 120])
        name = "".join(rng.choice(alphabet) for _ in range(length))
        if rng.random() < 0.3 and name:  # mostly valid, with one hostile character
            position = rng.randrange(len(name) + 1)
            clean = "".join(c if c in ALLOWED else "a" for c in name)
            name = clean[:position] + rng.choice(HOSTILE) + clean[position:]
        expected = oracle(name)
        try:
            assert validate_channel(name) == name
            got = True
        except InvalidChannelError:
            got = False
        assert got == expected, repr(name)
        checked += 1
        accepted += got
    # The fuzz must exercise both sides, or it checks nothing.
    assert checked == 20_000 and 1_000 < accepted < 19_000


class _Plain(BaseModel):
    order_id: int = 1


class _AgentField(BaseModel):
    agent_id: int = 7


class _AgentExtra(BaseModel):
    model_config = ConfigDict(extra="allow")


class _AgentProperty(BaseModel):
    @property
    def agent_id(self) -> int:
        return 9


@pytest.mark.parametrize(
    ("payload", "agents"),
    [
        (_Plain(), []),
        (_AgentField(), ["eventbus.agent.7"]),
        (_AgentExtra(agent_id=8), ["eventbus.agent.8"]),
        (_AgentExtra(), []),
        (_AgentProperty(), ["eventbus.agent.9"]),
    ],
)
def test_default_router_finds_an_agent_id_however_the_payload_has_one(payload, agents):
    """The router skips looking on payload types that cannot have one, and only those."""
    event = SimpleNamespace(
        project_id=3, payload=payload, actor_type=ActorType.SYSTEM, actor_id=None
    )
    assert default_channels(event) == ["eventbus.project.3", *agents]
