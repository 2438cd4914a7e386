"""The lab's tests use the training tests' fixtures (the real tokenizer, a tiny random backbone dir)."""

from tests.train.conftest import real_tokenizer, tiny_backbone_dir  # noqa: F401
