"""What the command line shows: quiet by default, `-v` for detail, `-q` for errors only,
`--json` for machine output, and a progress bar on a terminal.

`CONSOLE` is configured once by `cli.main`; commands print their summary with
`CONSOLE.say`, their JSON document with `CONSOLE.emit_json` and wrap long steps in
`CONSOLE.progress(...)` (a `(done, total)` callback, what `planner.plan(progress=...)`
takes) or `CONSOLE.busy(...)` (elapsed time, for steps that cannot count).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    return None


@dataclass
class Console:
    quiet: bool = False  # nothing but errors
    verbose: int = 0  # 1: INFO detail, 2: debug
    json: bool = False  # stdout is one JSON document
    bars: bool = False  # progress bars on stderr (a terminal)

    def configure(self, quiet: bool, verbose: int, as_json: bool) -> None:
        self.quiet, self.verbose, self.json = quiet, verbose, as_json
        self.bars = not quiet and _is_terminal(sys.stderr)
        level = (logging.ERROR if quiet else logging.DEBUG if verbose >= 2
                 else logging.INFO if verbose == 1 else logging.WARNING)
        root = logging.getLogger()
        for old in [h for h in root.handlers if getattr(h, "_tflm_patch_cli", False)]:
            root.removeHandler(old)
        handler = logging.StreamHandler(sys.stderr)  # the stream of this run (tests swap it)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        handler._tflm_patch_cli = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(level)

    def say(self, text: str = "") -> None:
        """A line of the human summary (not with -q or --json)."""
        if not self.quiet and not self.json:
            print(text)

    def detail(self, text: str) -> None:
        """A line shown with -v only."""
        if self.verbose and not self.json:
            print(text)

    def emit_json(self, doc: Any) -> None:
        print(json.dumps(doc, indent=2))

    @contextmanager
    def progress(self, desc: str, unit: str = "step") -> Iterator[Progress]:
        """A (done, total) callback drawing a bar on a terminal; a no-op elsewhere."""
        tqdm = _tqdm() if self.bars else None
        if tqdm is None:
            yield _no_progress
            return
        bars: list[Any] = []  # made at the first update, when the total is known

        def update(done: int, total: int) -> None:
            if not bars:
                bars.append(tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                                 leave=False, dynamic_ncols=True))
            bar = bars[0]
            if total != bar.total:
                bar.reset(total=total)
            bar.n = done
            bar.refresh()

        with self._redirect_logs():
            try:
                yield update
            finally:
                for bar in bars:
                    bar.close()

    @contextmanager
    def busy(self, desc: str) -> Iterator[None]:
        """Elapsed seconds on a terminal while a step that cannot count runs."""
        tqdm = _tqdm() if self.bars else None
        if tqdm is None:
            yield
            return
        stop = threading.Event()
        bar = tqdm(total=None, desc=desc, file=sys.stderr, leave=False,
                   bar_format="{desc}: {elapsed}")

        def tick() -> None:
            while not stop.wait(0.5):
                bar.refresh()

        thread = threading.Thread(target=tick, daemon=True)
        with self._redirect_logs(), bar:
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()

    def _redirect_logs(self) -> Any:
        if not self.verbose:
            return nullcontext()
        from tqdm.contrib.logging import logging_redirect_tqdm

        return logging_redirect_tqdm()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _tqdm() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # a bar is a nicety: without tqdm, no bar
        return None
    return tqdm


CONSOLE = Console()
