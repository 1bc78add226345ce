"""One module per `pdiff` subcommand, each the command line of one workflow stage.

A stage module holds argument parsing and the call into its implementation, nothing else:

- ``NAME``: the subcommand, as the workflow rules call it (``fit-diffusion``);
- ``HELP``: its one-line help;
- ``add_arguments(parser)``: its own options (the shared ones come from :mod:`.common`);
- ``check(args) -> str | None`` (optional): what argparse cannot say, e.g. options required by
  one ``--mode`` only; a message makes the parser fail as for any other usage error;
- ``run(args)``: calls the stage function, with keyword arguments only;
- ``TORCH_FREE = True`` (optional): the stage never uses torch, so ``--threads`` does not load
  it (torch's import is about 1.5 s of a short job).

Implementations are imported inside ``run`` so that ``pdiff --help`` stays fast. The registry
(the order of ``pdiff --help``) is :data:`pdiff.cli.STAGES`.
"""
