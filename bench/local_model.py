"""Local model throughput: llama-cpp-python called directly vs through the pipeline.

    .venv/bin/python -m bench.local_model [--runs 5] [--max-tokens 128]

Same prompt, same settings (temperature 0, so both generate the same tokens),
alternating direct and pipeline runs in one process to share the noise. The
pipeline runs bypass the response cache: a repeated temperature-0 prompt would
otherwise be answered from the first run's stored answer. The
pipeline path is the real one: submit (SQLite row) -> engine claims it -> five
stages -> chunks persisted in batches -> completion; tokens/s is measured from
submit to the completed row, so every orchestration cost is included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any, cast

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
os.environ.setdefault("ORCHESTRATOR_DATA_DIR", tempfile.mkdtemp(prefix="bench-local-"))

import django

django.setup()

from channels.db import database_sync_to_async  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from llama_cpp import Llama  # noqa: E402

from bench.loads import NO_CACHE  # noqa: E402
from inference import services  # noqa: E402
from inference.streaming import wait_until_finished  # noqa: E402
from pipeline.backends.llama_cpp import bundled_smollm2  # noqa: E402
from pipeline.host import PipelineHost  # noqa: E402

PROMPT = "Explain in a few paragraphs how a bicycle works."


def direct(llama: Llama, max_tokens: int) -> tuple[int, float]:
    messages: list[Any] = [
        {"role": "system", "content": settings.ORCHESTRATOR_SYSTEM_PROMPT},
        {"role": "user", "content": PROMPT},
    ]
    began = time.perf_counter()
    parts = []
    chunks = cast(
        Iterator[Any],
        llama.create_chat_completion(
            messages=messages, max_tokens=max_tokens, temperature=0, stream=True
        ),
    )
    for chunk in chunks:
        if text := chunk["choices"][0]["delta"].get("content"):
            parts.append(text)
    elapsed = time.perf_counter() - began
    # Counted as the pipeline counts usage: the tokens of the text generated.
    return len(llama.tokenize("".join(parts).encode(), add_bos=False, special=True)), elapsed


async def through_pipeline(max_tokens: int) -> tuple[int, float]:
    submission = services.Submission(
        prompt=PROMPT,
        backend="local",
        params={"max_tokens": max_tokens, "temperature": 0},
        cache_control=dict(NO_CACHE),
    )
    began = time.perf_counter()
    request, _ = await database_sync_to_async(services.submit_request)(submission)
    done = await wait_until_finished(request.pk, 300)
    elapsed = time.perf_counter() - began
    assert done.status == "completed", (done.status, done.error)
    return done.completion_tokens, elapsed


async def main(runs: int, max_tokens: int) -> None:
    llama = Llama(
        model_path=str(bundled_smollm2()), n_ctx=2048, n_threads=os.cpu_count(), verbose=False
    )
    host = PipelineHost()
    host.start()
    await through_pipeline(8)  # warm-up: loads the pipeline's model copy
    direct(llama, 8)
    rates: dict[str, list[float]] = {"direct": [], "pipeline": []}
    counts: dict[str, list[int]] = {"direct": [], "pipeline": []}
    for _ in range(runs):
        tokens, seconds = await asyncio.to_thread(direct, llama, max_tokens)
        rates["direct"].append(tokens / seconds)
        counts["direct"].append(tokens)
        tokens, seconds = await through_pipeline(max_tokens)
        rates["pipeline"].append(tokens / seconds)
        counts["pipeline"].append(tokens)
    await host.stop(grace=0)
    llama.close()
    report(rates, counts, runs, max_tokens)


def report(
    rates: dict[str, list[float]], counts: dict[str, list[int]], runs: int, max_tokens: int
) -> None:
    direct_median = statistics.median(rates["direct"])
    print(
        f"\nLocal model (SmolLM2-135M-Instruct Q4_1), {runs} runs each, max_tokens={max_tokens}, "
        f"temperature 0, {os.cpu_count()} cores\n"
    )
    print("| path | tokens/run | tokens/s median | min | max | vs direct |")
    print("|---|---|---|---|---|---|")
    for name in ("direct", "pipeline"):
        values = rates[name]
        median = statistics.median(values)
        tokens = statistics.median(counts[name])
        spread = f"{min(values):.1f} | {max(values):.1f}"
        print(f"| {name} | {tokens:.0f} | {median:.1f} | {spread} | {median / direct_median:.0%} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    asyncio.run(main(args.runs, args.max_tokens))
