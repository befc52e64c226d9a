"""The folder tree is the architecture: these checks keep it so.

pixelserver/ is layered: the words (vocabulary) and the settings at the bottom, the pure judging
(verdicts/) above them, the store (store/) above that, the pages (web/) above the store, and the
pixel, the hit pipeline and the server's assembly at the top. Imports only go down; the pixel
server never imports the relay; no module imports itself back through another.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pixelserver", "relay")

# Layer of each part of pixelserver (by its first name below pixelserver); a module may import
# only parts of a lower layer or of its own part.
LAYERS = {
    "vocabulary": 0,
    "config": 0,
    "tokens": 0,
    "oauthcode": 1,  # users' OAuth 2.0 grants: needs only the settings
    "verdicts": 1,
    "metrics": 2,
    "recordlimits": 2,  # how often a copy or a network is recorded, for pixel and links
    "store": 2,
    "web": 3,
    "hits": 4,
    "pixel": 5,
    "server": 6,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    name = ".".join(rel.parts)
    return name.removesuffix(".__init__")


def source_files() -> list[Path]:
    return [
        p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "migrations" not in p.parts or p.name == "env.py"
    ]


def imports_of(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The project modules `path` imports (a `from pkg import mod` names the module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                as_path = ROOT / Path(*candidate.split("."))
                is_module = as_path.with_suffix(".py").exists() or as_path.is_dir()
                found.add(candidate if is_module else node.module)
    return found


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else module


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_go_down(path: Path) -> None:
    module = module_name(path)
    if not module.startswith("pixelserver."):
        return
    mine = part(module)
    assert mine in LAYERS, f"{module}: a new part of pixelserver needs its place in LAYERS"
    for target in imports_of(path):
        assert not target.startswith("relay"), (
            f"{module} imports {target}: pixelserver never imports the relay"
        )
        theirs = part(target)
        if theirs == mine or target == "pixelserver":
            continue
        assert LAYERS[theirs] < LAYERS[mine], (
            f"{module} (layer {mine}) imports {target} (layer {theirs}): imports only go down"
        )


def test_no_import_cycles() -> None:
    graph = {module_name(p): imports_of(p, top_level_only=True) for p in source_files()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(nxt) is None:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module, [module])


def test_the_store_is_split_by_what_it_holds() -> None:
    store = ROOT / "pixelserver" / "store"
    assert not (store / "storage.py").exists() and not (store / "bulk.py").exists()
    for name in ("schema", "accounts", "messages", "hitrecords", "states"):
        assert (store / f"{name}.py").exists(), name
    for path in store.glob("*.py"):
        assert len(path.read_text().splitlines()) < 500, f"{path.name} grew past 500 lines"


# Words only the vocabulary spells out: elsewhere they are members of its StrEnums.
VOCABULARY_ONLY = (
    "human_via_proxy",
    "privacy_prefetch",
    "probably_opened",
    "prefetched_only",
    "scanned_only",
    "not_opened",
    "text_only",
    "dkim_signed",
    "opted_out",
    "store_unavailable",
    "one_gmail_send_for_all",
)


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_vocabulary_is_spelt_out_once(path: Path) -> None:
    if path.name == "vocabulary.py" or "migrations" in path.parts:
        return
    literals = {
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    words = {w for lit in literals for w in re.findall(r"[a-z_]+", lit) if w in VOCABULARY_ONLY}
    assert not words, f"{path.name} spells {sorted(words)}: use pixelserver.vocabulary"
