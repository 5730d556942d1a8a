"""The loopback upstream of scenario c, in a process of its own.

Serves ``harness/fake_llm_server.py`` (the OpenAI streaming wire format the test
suite uses); its model ``slow`` waits 50 ms before each word, so the first
token leaves the upstream 50 ms after the request arrives. Prints the port on
its first line of output, then serves until terminated.
"""

from __future__ import annotations

import asyncio

from harness.fake_llm_server import WORD_DELAY, FakeLLMServer

MODEL = "slow"
FIRST_TOKEN_DELAY = WORD_DELAY[MODEL]


async def main() -> None:
    server = await FakeLLMServer().start()
    print(server.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
