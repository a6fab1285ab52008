"""The project's docs live in the repository: docs/openapi.json is the served spec,
and every relative link of README.md and docs/*.md points at a file that exists."""
from __future__ import annotations

import json
import re
import sys

from config import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import dump_openapi  # noqa: E402

LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_committed_openapi_json_is_the_served_spec(client) -> None:  # type: ignore[no-untyped-def]
    committed = (ROOT / "docs" / "openapi.json").read_text()
    assert committed == dump_openapi.render(), "docs/openapi.json is stale: run make docs"
    served = client.get("/api/openapi.json").get_json()
    assert json.loads(committed)["paths"] == served["paths"]


def test_doc_links_resolve_inside_the_repository() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "examples").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not a file
            path = (page.parent / target).resolve()
            if ROOT not in path.parents and path != ROOT or not path.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
