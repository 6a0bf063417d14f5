"""`python -m bladegpt` (and `torchrun ... -m bladegpt -- train ...`: the `--` keeps train's --run from torchrun) runs
the CLI."""

from bladegpt.cli import main

if __name__ == "__main__":
    main()
