"""Every router of the API, in the order they appear in /docs."""

from fastapi import APIRouter

from app.api.routes import execute, generate, health, jobs, search

ROUTERS: list[APIRouter] = [
    generate.router,
    execute.router,
    search.router,
    jobs.router,
    health.router,
]
