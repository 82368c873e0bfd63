"""One module per ``mdfr`` subcommand; each exposes ``add_parser(subparsers)``."""
