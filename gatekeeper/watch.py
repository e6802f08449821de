"""watchdog -> debounce -> reload callback. (Filled in by the live-reload work.)"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable


class Watcher:
    """Placeholder watcher: reloads are only triggered by SIGHUP until live reload lands."""

    def __init__(self, root: Path, on_change: Callable[[], object], debounce: float = 0.1) -> None:
        self.root, self.on_change, self.debounce = root, on_change, debounce

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
