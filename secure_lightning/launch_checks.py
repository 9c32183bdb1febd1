"""Where the party processes come from, and the user's mistakes that would stop them, caught before they start.

On one machine the parties are forked from a forkserver that imports the user's script as `__mp_main__` (so its
classes can be unpickled there) — unless the script cannot be imported: a Jupyter notebook, an interactive session,
or a script read from stdin. Then the parties are forked from the launching process itself, as Lightning's
`ddp_notebook` does: they inherit its classes (and, on this one machine, a copy of its memory; only the data owner's
process ever reads data, but use a script file for anything beyond experiments).

Refused with our own messages, never with advice to drop privacy:
  * a script without the `if __name__ == "__main__":` guard (the parties would run it again);
  * a LightningModule (or DataModule) class that the parties cannot import: defined inside a function, or inside
    the script's `if __name__ == "__main__":` block (named with its file and line).
"""
from __future__ import annotations

import ast
import multiprocessing as mp
import os
import sys


def main_is_importable() -> bool:
    """Whether `__main__` is a script file the parties can import (False: notebook, REPL, stdin, `python -c`)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return bool(path) and os.path.isfile(path) and not hasattr(sys, "ps1") and "ipykernel" not in sys.modules


def start_method() -> str:
    """forkserver (with the script imported once) for importable scripts where available; fork otherwise."""
    methods = mp.get_all_start_methods()
    if not main_is_importable() and "fork" in methods:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


_GUARD_ADVICE = ("put the code that builds the Trainer and calls fit/validate/test/predict under\n\n"
                 "    if __name__ == \"__main__\":\n        main()\n\n"
                 "(classes such as your LightningModule stay at the top level, above it).")


def _guarded(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def unguarded_call_site() -> tuple[str, int] | None:
    """(file, line) of this call when it comes from the top level of an importable __main__ script, outside an
    `if __name__ == "__main__":` block (the parties, importing the script, would run it again); else None."""
    main = sys.modules.get("__main__")
    if not main_is_importable():
        return None
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:
        return None
    path, line = main.__file__, frame.f_lineno
    try:
        tree = ast.parse(open(path).read(), filename=path)
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return None if _guarded(node) else (os.path.basename(path), line)
    return None


def check_main_guard() -> None:
    """Raise if the script has no `if __name__ == "__main__":` guard around the Trainer call: in the launching
    process (before any party starts, naming the line) or in a party re-importing such a script."""
    site = unguarded_call_site()
    if site is not None:
        raise RuntimeError(f"RSS3PC starts its three party processes by importing your script, which would run the "
                           f"Trainer call at {site[0]}:{site[1]} again in each of them: " + _GUARD_ADVICE)
    if getattr(mp.current_process(), "_inheriting", False):
        raise RuntimeError("RSS3PC starts its three party processes by importing your script, and your script "
                           "started training again on import: " + _GUARD_ADVICE)


def check_importable(obj, what: str) -> None:
    """Raise when the parties could not import the class of `obj` (see the module docstring)."""
    if obj is None:
        return
    cls = type(obj)
    if "<locals>" in cls.__qualname__:
        raise RuntimeError(
            f"RSS3PC: your {what} class {cls.__qualname__.split('.<locals>.')[-1]} is defined inside the function "
            f"{cls.__qualname__.split('.<locals>')[0]}: the party processes cannot import it. Define it at the top "
            f"level of your script or of a module.")
    if cls.__module__ != "__main__" or not main_is_importable():
        return
    path = sys.modules["__main__"].__file__
    try:
        tree = ast.parse(open(path).read(), filename=path)
    except (OSError, SyntaxError):
        return
    top = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    top |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    top |= {(a.asname or a.name).split(".")[0] for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names}
    if cls.__name__ in top:
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            raise RuntimeError(
                f"RSS3PC: your {what} class {cls.__name__} is defined at {os.path.basename(path)}:{node.lineno} "
                f"inside a block (such as `if __name__ == \"__main__\":`) that the party processes do not run when "
                f"they import your script. Move the class above that block, to the top level.")
