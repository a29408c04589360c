"""Routes: json-1.1 control-plane operations by X-Amz-Target, runtime operations by path."""

from __future__ import annotations

import re

TARGET_PREFIX = "SageMaker."

CONTROL_OPERATIONS = {
    "CreateModel": "create_model",
    "DescribeModel": "describe_model",
    "DeleteModel": "delete_model",
    "ListModels": "list_models",
    "CreateEndpointConfig": "create_endpoint_config",
    "DescribeEndpointConfig": "describe_endpoint_config",
    "DeleteEndpointConfig": "delete_endpoint_config",
    "ListEndpointConfigs": "list_endpoint_configs",
    "CreateEndpoint": "create_endpoint",
    "DescribeEndpoint": "describe_endpoint",
    "DeleteEndpoint": "delete_endpoint",
    "ListEndpoints": "list_endpoints",
    "UpdateEndpoint": "update_endpoint",
    "UpdateEndpointWeightsAndCapacities": "update_endpoint_weights_and_capacities",
}

RUNTIME_PATH = re.compile(
    r"^/endpoints/(?P<name>[^/]+)/(?P<kind>async-invocations|invocations|invocations-response-stream)$"
)

ASYNC_HEADERS = {
    "ContentType": "X-Amzn-SageMaker-Content-Type",
    "Accept": "X-Amzn-SageMaker-Accept",
    "CustomAttributes": "X-Amzn-SageMaker-Custom-Attributes",
    "InferenceId": "X-Amzn-SageMaker-Inference-Id",
    "InputLocation": "X-Amzn-SageMaker-InputLocation",
    "S3OutputPathExtension": "X-Amzn-SageMaker-S3OutputPathExtension",
    "Filename": "X-Amzn-SageMaker-Filename",
    "RequestTTLSeconds": "X-Amzn-SageMaker-RequestTTLSeconds",
    "InvocationTimeoutSeconds": "X-Amzn-SageMaker-InvocationTimeoutSeconds",
}

REALTIME_HEADERS = {
    "ContentType": "Content-Type",
    "Accept": "Accept",
    "CustomAttributes": "X-Amzn-SageMaker-Custom-Attributes",
    "InferenceId": "X-Amzn-SageMaker-Inference-Id",
    "SessionId": "X-Amzn-SageMaker-Session-Id",
}

STREAM_HEADERS = {**REALTIME_HEADERS, "Accept": "X-Amzn-SageMaker-Accept"}

# Which instance answered a real-time request (localcloud's own header: sticky routing is observable).
INSTANCE_HEADER = "X-Localcloud-Instance-Id"
INSTANCE_PID_HEADER = "X-Localcloud-Instance-Pid"
