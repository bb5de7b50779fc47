"""tunesmith: the whole life of an LLM fine-tune, from data to a served adapter."""

__version__ = "0.1.0"
