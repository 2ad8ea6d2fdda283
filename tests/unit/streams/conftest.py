# Reuse the model tests' tiny trained checkpoint (a real model, trained in seconds).
from tests.unit.model.conftest import tiny_checkpoint, tiny_data, tiny_text  # noqa: F401
