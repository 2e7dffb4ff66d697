"""The README's Layout section matches the tree: every module of fer_fast/ and kernels/ is listed
once, nothing listed there is missing, and every top-level folder of the repository appears."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layout_paths() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```text\n(.*?)```", section, re.S)
    assert block, "the Layout section has no ```text block"
    return [line.split()[0] for line in block.group(1).splitlines() if line.strip()]


def test_layout_lists_every_module_once_and_only_modules_that_exist():
    listed = _layout_paths()
    twice = sorted({p for p in listed if listed.count(p) > 1})
    assert not twice, f"listed twice: {twice}"
    for package in ("fer_fast", "kernels"):
        on_disk = {f"{package}/{p.name}" for p in (ROOT / package).glob("*.py")}
        in_readme = {p for p in listed if p.startswith(f"{package}/")}
        assert in_readme == on_disk, (f"{package}/: not in the README {sorted(on_disk - in_readme)}, "
                                      f"not on disk {sorted(in_readme - on_disk)}")


SOURCE_SUFFIXES = {".py", ".cpp", ".cu", ".h", ".md", ".sh"}


def test_layout_names_every_top_level_source_folder():
    """Folders holding source or documentation files (not run outputs such as runs/<run>/)."""
    listed = {p.split("/")[0] for p in _layout_paths()}
    folders = {d.name for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".")
               and any(f.suffix in SOURCE_SUFFIXES for f in d.iterdir() if f.is_file())}
    assert folders <= listed, f"top-level folders missing from the Layout: {sorted(folders - listed)}"
