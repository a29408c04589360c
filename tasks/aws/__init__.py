"""AWS plumbing shared by every flow: boto3 clients built from a profile (``clients``), S3 URIs and
object helpers (``s3``), prefect-aws credential blocks (``blocks``) and the IAM roles and policies
docflow renders from ``deployments/iam`` (``iam``, which names run queues through
``tasks.run.plan.layout``), InvokeEndpointAsync with its rate limiter (``sagemaker_runtime``).
Nothing here knows about documents."""
