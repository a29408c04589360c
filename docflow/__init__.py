"""docflow: Prefect flows that run a document corpus through an LLM on a SageMaker async endpoint."""

__version__ = "0.1.0"
