"""The memory data layer in one import: what the API, the CLI and the workers call.

The functions live in modules named for what they hold (feedback, knowledge, history,
project files, the starter knowledge base); this module only gathers them. SQL only:
no torch, numpy or hnswlib here (the API imports it).
"""

from __future__ import annotations

from app.core.feedback import FeedbackResult, record_feedback
from app.core.history import (
    best_history,
    generation_to_json,
    get_generation,
    record_execution_status,
    record_usage,
    store_generation,
)
from app.core.knowledge import create_knowledge, knowledge_to_json, list_knowledge
from app.core.project_files import (
    delete_project_file,
    get_project_file,
    list_project_files,
    normalize_project_path,
    project_file_to_json,
    put_project_file,
)
from app.core.starter_knowledge import load_starter_knowledge, starter_snippets

__all__ = [
    "FeedbackResult",
    "best_history",
    "create_knowledge",
    "delete_project_file",
    "generation_to_json",
    "get_generation",
    "get_project_file",
    "knowledge_to_json",
    "list_knowledge",
    "list_project_files",
    "load_starter_knowledge",
    "normalize_project_path",
    "project_file_to_json",
    "put_project_file",
    "record_execution_status",
    "record_feedback",
    "record_usage",
    "starter_snippets",
    "store_generation",
]
