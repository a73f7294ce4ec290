"""One module per ``ntm`` command, each a tyro dataclass (or a few) and ``main(argv) -> exit status``."""
