"""The cache key: every field of a request is either in it or declared harmless
(the peers' commonest cache bug is a parameter left out of the key, serving one
question's answer to another), and the key changes exactly when the answer may."""

from __future__ import annotations

import json
import uuid
from dataclasses import fields, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from inference.models import canonical_sha256
from inference.openai_wire import ChatCompletionSerializer
from inference.serializers import InferRequestSerializer, WebSocketSubmitSerializer
from pipeline.backends.base import GenerationParams
from pipeline.cache import IN_KEY, NON_SEMANTIC, key_material
from pipeline.context import PipelineContext, RequestSnapshot


def every_request_field() -> set[str]:
    """What a client can send (three transports) and what the pipeline reads."""
    sent = {
        *InferRequestSerializer().fields,
        *WebSocketSubmitSerializer().fields,
        *ChatCompletionSerializer().fields,
    }
    seen = {f.name for f in fields(RequestSnapshot)} | {f.name for f in fields(GenerationParams)}
    return sent | seen


def test_every_request_field_is_in_the_key_or_declared_non_semantic() -> None:
    unplaced = every_request_field() - set(IN_KEY) - set(NON_SEMANTIC)
    assert unplaced == set(), (
        f"place {sorted(unplaced)} in pipeline/cache.py: IN_KEY if it can change the "
        "answer, NON_SEMANTIC (with the reason) if it cannot"
    )
    assert not set(IN_KEY) & set(NON_SEMANTIC)


def test_every_generation_parameter_is_in_the_key(settings) -> None:  # type: ignore[no-untyped-def]
    """The params part of the key is the whole GenerationParams, not a list (less
    what is declared non-semantic: the priority only schedules)."""
    material = key_material(context(), epoch=0)
    every = {f.name for f in fields(GenerationParams)}
    assert set(material["params"]) == every - set(NON_SEMANTIC)
    assert "priority" not in material["params"]


def context(**changes: Any) -> PipelineContext:
    params = GenerationParams(max_tokens=32, temperature=0.0)
    fixed = {"id": uuid.uuid4(), "attempt": 1, "prompt": "p", "session_id": "s", "backend": "echo"}
    snapshot = RequestSnapshot(
        **{**fixed, **changes.pop("snapshot", {})},
        params=replace(params, **changes.pop("params", {})),
        api_key_id=changes.pop("api_key_id", "alice123"),
    )
    ctx = PipelineContext(request=snapshot, sink=None)  # type: ignore[arg-type]
    ctx.messages = changes.pop("messages", [{"role": "user", "content": "p"}])
    return ctx


def key(ctx: PipelineContext, epoch: int = 0) -> str:
    return canonical_sha256(key_material(ctx, epoch))


VARIATIONS: dict[str, Any] = {
    "max_tokens": {"params": {"max_tokens": 33}},
    "temperature": {"params": {"temperature": 0.5}},
    "top_p": {"params": {"top_p": 0.9}},
    "stop": {"params": {"stop": ["x"]}},
    "seed": {"params": {"seed": 1}},
    "model": {"params": {"model": "other"}},
    "messages": {"messages": [{"role": "user", "content": "q"}]},
    "scope": {"api_key_id": "bob45678"},
    "backend": {"snapshot": {"backend": "slow-echo"}},
}


@pytest.mark.parametrize("name", VARIATIONS)
def test_changing_one_thing_that_matters_changes_the_key(name: str) -> None:
    assert key(context(**VARIATIONS[name])) != key(context())


def test_the_epoch_the_pipeline_and_the_backend_options_are_in_the_key(settings) -> None:  # type: ignore[no-untyped-def]
    ctx = context()
    assert key(ctx, epoch=1) != key(ctx, epoch=0)
    keys = {key(ctx)}
    settings.ORCHESTRATOR_REDACTIONS = [["secret", "[redacted]"]]
    keys.add(key(ctx))
    echo = settings.ORCHESTRATOR_BACKENDS["echo"]
    settings.ORCHESTRATOR_BACKENDS = {
        **settings.ORCHESTRATOR_BACKENDS,
        "echo": {**echo, "options": {"upstream_knob": 1}},
    }
    keys.add(key(ctx))
    # Credentials and runtime knobs are not: rotating a key keeps the cache.
    settings.ORCHESTRATOR_BACKENDS["echo"]["options"].update(api_key="new", token_delay=0.5)
    keys.add(key(ctx))
    assert len(keys) == 3


def test_what_does_not_matter_does_not_change_the_key() -> None:
    base = context()
    same = context(snapshot={"metadata": {"team": "x"}, "created_at": None})
    assert key(same) == key(base)
    assert key(context(snapshot={"id": uuid.uuid4(), "attempt": 3})) == key(base)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), JSON, max_size=6), st.randoms())
def test_key_order_never_changes_the_digest(value: dict[str, Any], random: Any) -> None:
    items = list(value.items())
    random.shuffle(items)
    assert canonical_sha256(dict(items)) == canonical_sha256(value)
    assert canonical_sha256(json.loads(json.dumps(value))) == canonical_sha256(value)


@hypothesis_settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 4096),
    st.floats(0, 2, allow_nan=False),
    st.floats(0, 1, allow_nan=False),
    st.lists(st.text(max_size=4), max_size=3),
)
def test_distinct_parameters_give_distinct_keys(
    max_tokens: int, temperature: float, top_p: float, stop: list[str]
) -> None:
    changes = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": stop}
    base = context()
    varied = context(params=changes)
    same = replace(base.request.params, **changes) == base.request.params
    assert (key(varied) == key(base)) == same
