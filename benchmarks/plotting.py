"""The benchmarks' PNG figures: matplotlib without a display (Agg), one look, one way to save.

matplotlib comes with the ``bench`` extra (``pip install -e '.[bench]'``); a benchmark whose
make target does not install it skips its plot instead of failing after a long run.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

RESULTS = Path(__file__).resolve().parent / "results"
DPI = 110
MISSING = "plot: skipped (matplotlib not installed: pip install -e '.[bench]')"


def available() -> bool:
    """Whether matplotlib can be imported here."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def figure(ncols: int = 1, width: float = 7.0, height: float = 4.2) -> tuple[Figure, list[Axes]]:
    """A new figure of ``ncols`` side-by-side axes with the shared look (light grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    row = list(axes[0])
    for ax in row:
        ax.grid(True, which="both", alpha=0.3)
    return fig, row


def plain_log_ticks(axis: Axis) -> None:
    """Ticks of a log axis at 1, 2 and 5 of each decade, written 0.2 and 50, not 2e-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())
    axis.grid(False, which="minor")  # the 1-2-5 major grid is enough


def wrap(title: str, width: int = 95) -> str:
    """A title broken into lines that fit a 7.5-inch figure."""
    return textwrap.fill(title, width)


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders made) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
