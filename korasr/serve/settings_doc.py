"""docs/settings.md from the settings schema (korasr/serve/config.py): ``python -m korasr.serve.settings_doc`` writes
it, ``--check`` exits 1 when it is stale (a test runs the check)."""

from __future__ import annotations

import sys
from pathlib import Path

from korasr.serve.config import ServeConfig, Setting, number, settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
HEAD = """# Service settings

```bash
make docs-settings      # regenerates this page from the schema (python -m korasr.serve.settings_doc)
```

Every setting of `korasr serve`, generated from its schema (`korasr/serve/config.py`) by
`python -m korasr.serve.settings_doc`; a test fails when this page is stale. A flag given beats its variable; an empty
variable counts as unset; a switch's variable takes 1/0, true/false, yes/no, on/off; a repeatable flag's variable a
comma-separated list, which the flags given replace. A value out of its bounds stops `korasr serve` with the flag's
or the variable's name and the reason; `ServeConfig(...)` refuses it naming the field. The secrets have variables
only (a command line is visible to every user of the host). Bounds and defaults are in the flag's unit.

| flag | variable | field | type | default | bounds | meaning |
|---|---|---|---|---|---|---|
"""


def _type(s: Setting) -> str:
    if s.secret:
        return "secret"
    if s.choices:
        return " \\| ".join(s.choices)
    kind = "float" if s.scale != 1 else s.kind.__name__
    unit = {1024: " (KiB)", 2**20: " (MiB)"}.get(s.scale, "")
    return ("list of " if s.repeatable else "") + kind + unit


def _default(s: Setting) -> str:
    value = s.flag_default
    if s.required:
        return "required"
    if value is None or value == ():
        return "—"
    return number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value).lower()


def row(s: Setting) -> str:
    field = f"`{s.name}`" if s.owner is ServeConfig else "—"
    cells = [f"`{s.flag}`" if s.flag else "—", f"`{s.env}`", field, _type(s), _default(s), s.span() or "—",
             s.help.replace("|", "\\|")]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def render() -> str:
    return HEAD + "".join(row(s) + "\n" for s in settings() if s.flag or s.secret)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if argv == ["--check"]:
        if PAGE.is_file() and PAGE.read_text() == text:
            return 0
        print(f"{PAGE}: stale; regenerate it with python -m korasr.serve.settings_doc", file=sys.stderr)
        return 1
    if argv:
        print("usage: python -m korasr.serve.settings_doc [--check]", file=sys.stderr)
        return 2
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
