"""`python -m bladegpt` (and `torchrun -m bladegpt train ...`) runs the CLI."""

from bladegpt.cli import main

if __name__ == "__main__":
    main()
