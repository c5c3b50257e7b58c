"""The ``newsmon`` command line: one group per module, composed here.

Errors: a ``NewsmonError`` from any command becomes its one-line message here, the one place
that maps errors to what the user reads (``common.fail``).
"""

from __future__ import annotations

import click

from newsmon import __version__, logs
from newsmon.app.cli import admin, alerts, config, feeds, pipeline, search, status
from newsmon.app.cli.common import fail
from newsmon.errors import NewsmonError


class _Newsmon(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NewsmonError as exc:
            raise fail(exc) from None


@click.group(cls=_Newsmon)
@click.version_option(__version__, prog_name="newsmon")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Monitor news feeds: fetch, extract, detect language, tag topics, index, search.

    Data goes to $NEWSMON_DATA_DIR (default ./data); configuration is read from
    $NEWSMON_CONFIG_DIR (default ./config).
    """
    logs.setup(verbose)


for command in (pipeline.demo, pipeline.run_command, pipeline.stage, search.search, search.serve, search.extract,
                status.stats, admin.dlq, admin.topics, admin.es, admin.fetch, alerts.alerts, config.config_group,
                feeds.feeds_group):
    main.add_command(command)
