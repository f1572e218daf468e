"""Command line: ``python -m libs.demo DIR [--size tiny] [--seed 0] [--dtype NAME]``."""

from __future__ import annotations

import argparse
import sys
import time

from libs.demo.errors import DemoModelError
from libs.demo.sizes import DEMO_SIZES, DTYPE_NAMES, demo_param_count


def _parser() -> argparse.ArgumentParser:
    sizes = "; ".join(f"{name}: {spec.description}" for name, spec in DEMO_SIZES.items())
    parser = argparse.ArgumentParser(
        prog="python -m libs.demo",
        description="Write a deterministic random Llama demo model and tokenizer to DIR.",
        epilog=f"sizes: {sizes}",
    )
    parser.add_argument("directory", metavar="DIR", help="target model directory")
    parser.add_argument("--size", default="tiny", choices=list(DEMO_SIZES), help="default: tiny")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    parser.add_argument(
        "--dtype", default=None, choices=list(DTYPE_NAMES), help="default: the size's own dtype"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write a demo model as the arguments say and print where and how big.

    Returns:
        0 on success, 2 when the arguments or the target directory are rejected.
    """
    args = _parser().parse_args(argv)
    # Imported here so that --help answers without loading torch and transformers.
    from libs.demo.writer import write_demo_model

    started = time.perf_counter()
    try:
        path = write_demo_model(args.directory, args.size, args.seed, dtype=args.dtype)
    except DemoModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    print(
        f"wrote demo model {args.size!r} (seed {args.seed}, "
        f"{demo_param_count(args.size):,} parameters) to {path} in {elapsed:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
