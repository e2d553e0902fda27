"""The repository keeps the shape DEVELOPERS.md describes: it stands alone, and `peer/` shows the
roles and the plumbing rather than a heap of modules."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def test_no_file_cites_documents_that_are_not_in_the_repository():
    # The brief and the user's seed documents live outside the repository; what the code and the
    # docs rely on is in docs/ (invariants.md, interface.md).
    cited = re.compile(r"MISSION\.md|STYLE\.md|STACK\.md|\bseeds?[ -]0\d\d\b", re.IGNORECASE)
    offenders = []
    for path in tracked_files():
        if path.suffix not in (".py", ".md", ".toml", ".txt", ".cfg", ".yml", ".yaml", ""):
            continue
        if path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [
            f"{path.relative_to(ROOT)}:{n}"
            for n, line in enumerate(text.splitlines(), 1)
            if cited.search(line)
        ]
    assert offenders == []


def test_peer_holds_at_most_ten_modules_the_rest_is_in_packages():
    modules = sorted(p.name for p in (ROOT / "peer").glob("*.py"))
    assert len(modules) <= 10, modules
    for role in ("exchange", "ledger", "market_maker", "http", "tools", "commands"):
        assert (ROOT / "peer" / role / "__init__.py").is_file(), role


def test_every_module_of_the_package_says_what_it_is_for():
    missing = []
    for folder in ("peer", "gossip", "book", "ledger", "viz"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if path.name != "__init__.py" or tree.body:
                if ast.get_docstring(tree) is None:
                    missing.append(str(path.relative_to(ROOT)))
    assert missing == []


def test_benchmarks_import_the_installed_package_without_editing_sys_path():
    edits = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "bench").glob("*.py"))
        if re.search(r"sys\.path\.(insert|append)", path.read_text(encoding="utf-8"))
    ]
    assert edits == []
