"""Rewrite migrations/versions/0001_initial.py from the models.

Used only before the first release, while the schema is still one revision; after
that, every change is a new revision made with ``alembic revision --autogenerate``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from expplatform.migrations import MIGRATIONS_DIR, alembic_config

TARGET = MIGRATIONS_DIR / "versions" / "0001_initial.py"


def main() -> None:
    TARGET.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'empty.sqlite3'}"
        engine = create_engine(url)
        with engine.begin() as connection:
            config = alembic_config(url, connection)
            command.revision(config, message="initial schema", autogenerate=True, rev_id="0001")
    generated = next((MIGRATIONS_DIR / "versions").glob("0001_*.py"))
    generated.rename(TARGET)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
