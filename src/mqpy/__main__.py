"""`python -m mqpy` is the `mqpy` command."""

from mqpy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
