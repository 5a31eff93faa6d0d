"""``python -m greenflow.cli``: the same as the ``greenflow`` command."""
from greenflow.cli.main import main

if __name__ == "__main__":
    main(prog_name="greenflow")
