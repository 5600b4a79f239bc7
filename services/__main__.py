"""``python -m services`` is the ``disco`` command."""

from services.cli import main

if __name__ == "__main__":
    main()
