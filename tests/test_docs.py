"""The project's own design notes: every docs/ file the code, the tests and the README name exists, and nothing
points at a design file outside the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
SOURCES = [*ROOT.glob("src/crossgraft/**/*.py"), *ROOT.glob("tests/**/*.py"), ROOT / "README.md",
           *ROOT.glob("docs/*.md")]  # fmt: skip


def test_every_docs_reference_resolves():
    missing = []
    for source in SOURCES:
        for reference in re.findall(r"docs/[\w./-]+\.(?:md|png|svg)", source.read_text(encoding="utf-8")):
            if not (ROOT / reference).is_file():
                missing.append(f"{source.relative_to(ROOT)}: {reference}")
    for note in ROOT.glob("docs/*.md"):
        for link in re.findall(r"\]\(([\w.-]+\.md)\)", note.read_text(encoding="utf-8")):
            if not (note.parent / link).is_file():
                missing.append(f"{note.relative_to(ROOT)}: {link}")
    assert not missing, missing


def test_nothing_cites_a_design_file_outside_the_repository():
    design = "DESIGN" + " §"  # spelled in two parts so this file does not cite it
    citing = [str(s.relative_to(ROOT)) for s in SOURCES if design in s.read_text(encoding="utf-8")]
    assert not citing, citing
