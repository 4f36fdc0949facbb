"""Alembic environment: the engine comes from prefer (db.alembic_config), never from an ini file."""

from alembic import context

from prefer.labeling.app.models import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    # render_as_batch: SQLite alters tables by copying them, which batch mode does for us.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
