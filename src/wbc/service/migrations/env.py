"""Alembic environment of ``wbc serve``: run by :func:`wbc.service.db.migrate` with an open connection.

A developer adding a migration changes the models in ``db.py`` and autogenerates a revision against
a database at the newest revision (docs/service.md, "Changing the schema").
"""

from alembic import context
from sqlalchemy import create_engine

from wbc.service.db import Base

config = context.config
target_metadata = Base.metadata


def run(connection) -> None:
    # render_as_batch: SQLite alters tables by copying them; Alembic's batch mode does that for us
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:  # the alembic command line, with sqlalchemy.url set
    with create_engine(config.get_main_option("sqlalchemy.url")).begin() as conn:
        run(conn)
