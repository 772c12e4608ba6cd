"""The documentation stays true to the code: the settings table in docs/operations.md is the
one Settings gives, every relative link points at a file (and heading) that exists, and the
README stays short enough to read in five minutes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from app.settings import PROJECT_ROOT, Settings

README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
OPERATIONS = DOCS / "operations.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"
README_MAX_LINES = 200

# [text](target): the target up to a closing parenthesis or a space (a title may follow)
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def variable(name: str) -> str:
    """The environment variable a Settings field is read from."""
    return "DATABASE_URL" if name == "database_url" else f"SEGMENTS_{name.upper()}"


def default_text(value: object) -> str:
    """A field's default as one would write it in the environment."""
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, Path):
        # the project's own folders are shown relative to it, not as this machine's path
        shown = value.relative_to(PROJECT_ROOT) if value.is_relative_to(PROJECT_ROOT) else value
        return f"`{shown.as_posix()}/`" if value.is_absolute() else f"`{shown.as_posix()}`"
    if value == "":
        return "(empty)"
    return f"`{value}`"


def description(name: str, field: FieldInfo) -> str:
    assert field.description, f"Settings.{name} has no description: add one to app/settings.py"
    return " ".join(field.description.split()).replace("|", "\\|")


def settings_table() -> str:
    """The Markdown table of every setting, in the order Settings declares them."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        rows.append(
            f"| `{variable(name)}` | {default_text(field.default)} | {description(name, field)} |"
        )
    return "\n".join(rows) + "\n"


def test_the_settings_table_is_the_one_settings_gives() -> None:
    text = OPERATIONS.read_text()
    assert text.count(START) == 1, f"{OPERATIONS} needs one {START} marker"
    assert text.count(END) == 1, f"{OPERATIONS} needs one {END} marker"
    documented = text.split(START, 1)[1].split(END, 1)[0]
    expected = "\n" + settings_table()
    assert documented == expected, (
        f"the settings table in {OPERATIONS.name} is out of date: run "
        "`.venv/bin/python -m tests.test_docs` to write it from app/settings.py"
    )


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_the_documents_exist() -> None:
    names = {path.name for path in DOCS.glob("*.md")}
    assert {
        "api.md",
        "operations.md",
        "models.md",
        "audiences-and-privacy.md",
        "performance.md",
        "deployment.md",
    } <= names


def prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The numbered lines of a Markdown file outside fenced code blocks."""
    in_code = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code:
            yield number, line


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (without the -1, -2 it adds to
    repeated headings: these files link to none)."""
    found = set()
    for _, line in prose_lines(path):
        if heading := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            found.add(slug.replace(" ", "-"))
    return found


def test_every_relative_link_points_at_a_file_that_exists() -> None:
    broken = []
    for path in markdown_files():
        for number, line in prose_lines(path):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # a URL: https:, mailto:
                file_part, _, anchor = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(PROJECT_ROOT)}:{number}: {target}"
                if not linked.exists():
                    broken.append(f"{where} (no such file)")
                elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                    broken.append(f"{where} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_is_short_and_names_the_two_commands() -> None:
    text = README.read_text()
    lines = len(text.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it to {README_MAX_LINES}"
    assert "make serve" in text
    assert "make test" in text


if __name__ == "__main__":  # write the settings table into docs/operations.md
    before, rest = OPERATIONS.read_text().split(START, 1)
    OPERATIONS.write_text(before + START + "\n" + settings_table() + END + rest.split(END, 1)[1])
    print(f"wrote the settings table of {OPERATIONS}")
