"""Each pipeline stage on its own, and the stage runner."""

from __future__ import annotations

import uuid

import pytest

from pipeline.backends.base import GenerationParams
from pipeline.context import PipelineContext, RequestSnapshot
from pipeline.stages import run_stages
from pipeline.stages.assemble import AssembleStage
from pipeline.stages.base import Stage
from pipeline.stages.infer import InferenceStage
from pipeline.stages.post import PostStage, cap_length, cut_at_stop, redact, tidy_whitespace
from pipeline.stages.rag import RagStage
from pipeline.stages.stream import StreamStage


class ListSink:
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.closed = False
        self.finished = False

    async def write(self, text: str) -> None:
        self.tokens.append(text)

    async def close(self) -> None:
        self.closed = True

    async def finish(self) -> None:
        self.finished = True

    def tail(self) -> tuple[int, list[str]]:
        return len(self.tokens), []


def context(prompt: str = "hello big world", stop: list[str] | None = None) -> PipelineContext:
    snapshot = RequestSnapshot(
        id=uuid.uuid4(),
        attempt=1,
        prompt=prompt,
        session_id="s",
        backend="echo",
        params=GenerationParams(max_tokens=50, stop=stop or []),
    )
    return PipelineContext(request=snapshot, sink=ListSink())


@pytest.mark.django_db(transaction=True)
async def test_rag_without_documents_retrieves_nothing() -> None:
    assert (await RagStage().run(context())).passages == []


@pytest.mark.django_db(transaction=True)
async def test_assemble_puts_the_system_prompt_before_the_user_prompt(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_SYSTEM_PROMPT = "Be brief."
    ctx = await AssembleStage().run(context("Hi"))
    assert ctx.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


@pytest.mark.django_db(transaction=True)
async def test_inference_streams_each_delta_into_the_sink() -> None:
    ctx = await AssembleStage().run(context("a b c"))
    ctx = await InferenceStage().run(ctx)
    assert ctx.sink.tokens == ["a", " b", " c"]  # type: ignore[attr-defined]
    assert ctx.output == "a b c"
    assert ctx.usage.completion_tokens == 3
    assert "first_token" in ctx.timings


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("abc END def", ["END"], "abc "),
        ("abc", ["END"], "abc"),
        ("x1y2", ["2", "1"], "x"),
        ("keep", [""], "keep"),
    ],
)
def test_cut_at_stop_keeps_the_text_before_the_earliest_stop(text, stops, expected) -> None:  # type: ignore[no-untyped-def]
    assert cut_at_stop(text, stops) == expected


def test_cap_length_cuts_at_the_limit() -> None:
    assert cap_length("abcdef", 4) == "abcd" and cap_length("ab", 4) == "ab"


def test_tidy_whitespace_trims_lines_and_blank_runs() -> None:
    assert tidy_whitespace("  one  \n\n\n\ntwo\t \n ") == "one\n\ntwo"


def test_redact_applies_each_rule_in_order() -> None:
    rules = [[r"[\w.]+@[\w.]+", "[email]"], [r"\d{3}-\d{4}", "[phone]"]]
    assert redact("mail a.b@c.org or 555-1234", rules) == "mail [email] or [phone]"
    assert redact("nothing here", []) == "nothing here"


async def test_post_applies_stops_and_trims_whitespace() -> None:
    ctx = context(stop=["STOP"])
    ctx.output = "  answer here STOP ignored"
    assert (await PostStage().run(ctx)).result == "answer here"


async def test_stream_stage_leaves_the_last_tokens_to_the_completion() -> None:
    ctx = await StreamStage().run(context())
    assert ctx.sink.finished and not ctx.sink.closed  # type: ignore[attr-defined]


async def test_the_runner_records_every_stage_duration() -> None:
    class Named(Stage):
        def __init__(self, name: str) -> None:
            self.name = name

        async def run(self, ctx: PipelineContext) -> PipelineContext:
            return ctx

    ctx = await run_stages(context(), (Named("one"), Named("two")))
    assert set(ctx.timings) == {"one", "two"}
    assert all(value >= 0 for value in ctx.timings.values())
