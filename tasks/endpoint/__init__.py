"""The SageMaker endpoint: its spec and resource names (``spec``), deploy/update/teardown of the
Model, EndpointConfig and Endpoint (``deploy``), its SNS success/error topics (``topics``) and
its autoscaling policy to and from zero (``autoscaling``)."""
