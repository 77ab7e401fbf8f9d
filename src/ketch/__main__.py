"""``python -m ketch``: the same as the ``ketch`` command."""

from ketch.cli import main

if __name__ == "__main__":
    main()
