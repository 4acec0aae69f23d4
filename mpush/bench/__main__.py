"""``python -m mpush.bench``: the same as the ``mpush-bench`` console script."""

from mpush.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
