"""`make lab`: build each lesson's notebook once into a student folder and open JupyterLab there.

The lessons are kept as jupytext percent-format sources (``lessons/0*.py``). A student edits
the *notebook*, so the notebook is built only where it does not exist yet and is never
rebuilt over a student's edits; the folder holds notebooks only, so the file browser shows
what a student should open and not the tracked sources. JupyterLab is started with its news
pop-up and update check off (the lab runs offline) and with a save hook that drops widget
views from saved outputs: a saved widget view refers to a widget model of a kernel that is
gone, and reopens as "Error displaying widget: model not found".

    python -m lessons.lab --dir lab            # build what is missing, then open JupyterLab
    python -m lessons.lab --dir lab --build-only
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
"""The kernel ipykernel installs, named as JupyterLab names it: with the kernel's language_info
(written at build time), an untouched lesson opens without being marked unsaved."""

SETTINGS = ROOT / "lessons" / "lab_settings"
"""JupyterLab's settings defaults for the lab (``overrides.json``): never fetch news, never ask."""
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_REPR = re.compile(r"^[A-Z]\w*\(")
"""A widget's text form is its class and arguments ("VBox(children=...", "Output()"); a tqdm bar's is the bar."""
CONTROLS_NOTE = "(interactive controls: run this cell to show them)"


def build(folder: Path, sources: Sequence[Path] = SOURCES) -> list[tuple[Path, bool]]:
    """Write ``folder/<lesson>.ipynb`` for each source where it does not exist yet.

    Returns (notebook, built) pairs: ``built`` is False where a notebook was already there
    and was kept untouched (it may hold a student's work).
    """
    import jupytext
    from ipykernel.ipkernel import IPythonKernel

    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--dir {folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for source in sources:
        target = folder / f"{source.stem}.ipynb"
        if target.exists():
            done.append((target, False))
            continue
        nb = jupytext.read(source)
        nb.metadata["kernelspec"] = dict(KERNELSPEC)
        nb.metadata["language_info"] = dict(IPythonKernel.language_info)  # what the kernel reports on start
        nb.metadata.pop("jupytext", None)  # a plain notebook, not paired with the tracked source
        jupytext.write(nb, target, fmt="ipynb")
        done.append((target, True))
    return done


def _plain_text(output: dict[str, Any]) -> str:
    text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def is_control(output: dict[str, Any]) -> bool:
    """Whether a widget-view output shows controls (its text form is a widget repr, "VBox(children=...")
    rather than a progress bar (tqdm's text form is the bar itself)."""
    return bool(WIDGET_REPR.match(_plain_text(output)))


def strip_widget_views(model: dict[str, Any], **_: Any) -> None:
    """A Jupyter ``pre_save_hook``: drop widget views from a notebook's saved outputs.

    A saved view refers to a widget model that dies with the kernel. Controls become a one-line
    note (once per cell) that running the cell shows them again; a progress bar is dropped (its
    text form is a snapshot from when it was first shown, "0%| | 0/300", and the lab's bars
    vanish when done). The notebook-level widget state is dropped too.
    """
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    nb = model["content"]
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        kept: list[dict[str, Any]] = []
        for output in cell.get("outputs", []):
            if WIDGET_VIEW not in output.get("data", {}):
                kept.append(output)
            elif is_control(output) and not any(_plain_text(o) == CONTROLS_NOTE for o in kept):
                kept.append({"output_type": "display_data", "metadata": {}, "data": {"text/plain": CONTROLS_NOTE}})
        if "outputs" in cell:
            cell["outputs"] = kept


def server_args(folder: Path, as_root: bool | None = None) -> list[str]:
    """The JupyterLab options the lab runs with: the student folder as root, no news pop-up and no
    update check (the settings defaults in :data:`SETTINGS`; the lab runs offline),
    :func:`strip_widget_views` on every save, and ``--allow-root`` when run by root (``as_root``,
    default: whether this process's user id is 0), as in most containers, where JupyterLab
    otherwise refuses to start."""
    if as_root is None:
        as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    return [f"--ServerApp.root_dir={folder}",
            f"--LabApp.app_settings_dir={SETTINGS}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--ContentsManager.pre_save_hook=lessons.lab.strip_widget_views",
            *(["--allow-root"] if as_root else [])]


def main(argv: Sequence[str] | None = None) -> int:
    """Build the missing notebooks, say what was done, then (unless ``--build-only``) run JupyterLab."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "lab", help="the student folder (default: lab/)")
    parser.add_argument("--build-only", action="store_true", help="build the notebooks, do not start JupyterLab")
    args = parser.parse_args(argv)
    folder = args.dir.resolve()
    for notebook, built in build(folder):
        print(f"{'built' if built else 'kept (yours, not overwritten)'}: {notebook}")
    print(f"Notebooks are built once from lessons/*.py and never overwritten. To start a lesson afresh, "
          f"delete or rename its notebook in {folder} and run `make lab` again.")
    if args.build_only:
        return 0
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "jupyterlab", *server_args(folder)]
    print("starting:", " ".join(command))
    os.execve(sys.executable, command, env)  # JupyterLab replaces this process


if __name__ == "__main__":
    raise SystemExit(main())
