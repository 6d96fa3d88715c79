"""Configuration of ``wbc serve`` in one typed place; the defaults are those of ``wbc serve --help``."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from ..differential import MIN_CELLS
from ..errors import WbcError

#: Environment variable holding the API token (so it stays out of the process list).
TOKEN_ENV = "WBC_TOKEN"
MB = 2**20


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and the loopback addresses (127.0.0.0/8, ::1).

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


@dataclass
class ServiceSettings:
    """Everything the web service needs. ``db_url`` ``None`` = a SQLite file in ``data_dir``."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("wbc-data")
    db_url: str | None = None
    token: str | None = None  # required for every write when set; mandatory off loopback
    max_file_mb: float = 32.0  # one uploaded image
    max_request_mb: float = 512.0  # one request (all its files)
    max_files: int = 500  # files in one request
    max_megapixels: float = 100.0  # one image, checked from its header before decoding
    model: str | None = None  # default: the bundled model
    precision: str = "auto"  # as in wbc predict: inference.load_predictor's options
    batch_size: int = 64
    backend: str = "auto"
    ranges: str | None = None  # default: the bundled adult reference ranges
    review_threshold: float | None = None  # default: the model's own, else counting.DEFAULT_REVIEW_THRESHOLD
    min_cells: int = MIN_CELLS
    max_attempts: int = 2  # analyses cut short by a server stop before the sample is marked failed

    @property
    def database_url(self) -> str:
        return self.db_url or sqlite_url(self.data_dir / "wbc.sqlite3")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * MB)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MB)

    def check(self) -> ServiceSettings:
        """Validate; returns ``self``. Raises :class:`WbcError` with the option to fix."""
        if not self.token:
            self.token = os.environ.get(TOKEN_ENV) or None
        if not is_loopback(self.host) and not self.token:
            raise WbcError(f"binding to {self.host} (not loopback) requires an API token for writes: "
                           f"pass --token or set {TOKEN_ENV}")
        if not 0 < self.port < 65536:
            raise WbcError(f"--port must be in 1-65535, got {self.port}")
        for name in ("max_file_mb", "max_request_mb", "max_megapixels"):
            if not getattr(self, name) > 0:
                raise WbcError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_files < 1:
            raise WbcError(f"--max-files must be at least 1, got {self.max_files}")
        if self.review_threshold is not None and not 0 <= self.review_threshold <= 1:
            raise WbcError(f"--review-threshold must be in [0, 1], got {self.review_threshold}")
        self.data_dir = Path(self.data_dir)
        return self


__all__ = ["ServiceSettings", "TOKEN_ENV", "is_loopback", "sqlite_url"]
