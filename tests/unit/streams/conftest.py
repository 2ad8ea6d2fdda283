"""The tiny trained model of the model tests, shared with the pipeline tests."""

from tests.unit.model.conftest import tiny_checkpoint, tiny_data, tiny_text  # noqa: F401
