"""Regenerate the committed JSON Schema files: ``python -m streamrec.schemas``."""

from streamrec.schemas import write_schemas

write_schemas()
