# The runtime of docflow's flows on an ECS or Kubernetes work pool (deployments/prefect-aws.yaml).
# The flows only orchestrate (S3, SageMaker, SQS, Prefect); the model runs on the endpoint.
#   docker build -t docflow-flows . && docker tag/push to ECR
FROM python:3.11-slim

WORKDIR /opt/docflow
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

# torch's CPU wheel: the packaging flow converts models on CPU; the CUDA wheels are GBs it never uses.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY docflow ./docflow
COPY flows ./flows
COPY tasks ./tasks
COPY inference ./inference
COPY localcloud ./localcloud
COPY deployments ./deployments
COPY datasets ./datasets
COPY prefect.yaml ./
# Editable: the flows find inference/ (the model code they package) beside them, as in a checkout.
RUN pip install -e . "prefect-aws==0.7.12"

# A worker on the pool starts each flow run with this image; the command comes from Prefect.
CMD ["prefect", "worker", "start", "--pool", "docflow-ecs", "--type", "ecs"]
