"""Daphne's ``runserver`` with the orchestrator's server (see orchestrator_site/server.py)."""

from __future__ import annotations

from daphne.management.commands.runserver import Command as DaphneRunserver

from orchestrator_site.server import OrchestratorServer


class Command(DaphneRunserver):
    server_cls = OrchestratorServer
