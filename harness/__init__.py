"""What tests, benchmarks and scripts share to drive the real thing: throwaway
server and worker processes (``processes``), a loopback fake of the OpenAI and
Anthropic streaming APIs (``fake_llm_server``), SSE/WebSocket clients
(``clients``) and service outages (``outages``).

Importable from the project root (``python -m bench.run``, pytest), so nothing
edits ``sys.path``. It imports no application code: it drives processes.
"""
