"""Where LongReach meets a model runtime: ``transformers`` (``extend``/``restore``). Each
integration shares the methods, the engine and ``longreach.models``' facts about a model."""
