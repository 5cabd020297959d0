"""Docstrings cite docs/method.md by anchor; every cited anchor exists, and nothing cites a file outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cited_method_sections_exist_and_nothing_cites_spec():
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', (REPO / "docs" / "method.md").read_text()))
    sources = [*REPO.glob("sparsefusion_ns/**/*.py"), *REPO.glob("tests/*.py"), *REPO.glob("docs/*.md")]
    missing, spec = {}, []
    for path in sources:
        text = path.read_text()
        cited = set(re.findall(r"method\.md#([a-z0-9-]+)", text))
        if cited - anchors:
            missing[path.name] = sorted(cited - anchors)
        if re.search(r'\bSPEC(\.md)? "', text):
            spec.append(path.name)
    assert not missing, f"sections cited but not in docs/method.md: {missing}"
    assert not spec, f"these cite SPEC, which is not in the repository: {spec}"
