"""What each supported language means to the model: a description, a fence tag, aliases.

Shared by `prompts` (what to ask for) and `codeblocks` (which fences to pick), so
that the tag we ask for is always one we accept. react and tailwind are JSX, nestjs is
TypeScript, vite is JavaScript (the seed's language table).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LanguageProfile:
    description: str  # how the system prompt names the target
    fence: str  # the info string we ask the model to put on its code fence
    aliases: frozenset[str]  # info strings accepted as this language when extracting
    hint: str = ""  # one extra instruction, when the stack has a convention worth stating


def _profile(description: str, fence: str, *aliases: str, hint: str = "") -> LanguageProfile:
    return LanguageProfile(description, fence, frozenset({fence, *aliases}), hint)


LANGUAGES: dict[str, LanguageProfile] = {
    "python": _profile("Python 3", "python", "py", "python3", "py3"),
    "javascript": _profile(
        "JavaScript (Node.js, ES modules)", "javascript", "js", "node", "mjs", "cjs"
    ),
    "typescript": _profile("TypeScript", "typescript", "ts"),
    "java": _profile(
        "Java 17",
        "java",
        hint="If the code is a runnable program, put main in `public class Main`.",
    ),
    "react": _profile(
        "React (JSX function components)",
        "jsx",
        "react",
        "javascript",
        "js",
        "tsx",
        hint="Export the main component as the default export.",
    ),
    "tailwind": _profile(
        "React (JSX) styled with Tailwind CSS utility classes",
        "jsx",
        "tailwind",
        "react",
        "javascript",
        "js",
        "tsx",
        "html",
        hint="Style with Tailwind utility classes in className, not CSS files.",
    ),
    "vite": _profile(
        "JavaScript for a Vite project (ES modules)", "javascript", "js", "jsx", "vite", "mjs"
    ),
    "nestjs": _profile(
        "TypeScript for a NestJS application",
        "typescript",
        "ts",
        "nestjs",
        hint="Use NestJS decorators, modules and providers.",
    ),
}


def language_profile(language: str) -> LanguageProfile:
    """The profile for `language`; unknown names get a generic one rather than an error."""
    key = language.strip().lower()
    return LANGUAGES.get(key) or _profile(language.strip() or "code", key or "text")
